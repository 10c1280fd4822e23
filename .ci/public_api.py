#!/usr/bin/env python3
"""The crate's public API as a sorted listing, one item a line, from rustdoc's JSON output.

    python3 .ci/public_api.py            # compare with public-api.txt; exit 1 on a difference
    python3 .ci/public_api.py --bless    # write public-api.txt (acknowledge a change)

Needs a nightly toolchain (rustdoc's JSON output is unstable). Lists every public path
reachable from the crate root (modules, re-exports, types, traits, functions, constants,
methods of inherent impls, enum variants, public fields, trait impls written in this crate)
with function signatures, so renaming, removing or re-typing anything public shows up as a
diff. Auto traits and blanket impls are left out: they follow from the types.
"""
import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LISTING = os.path.join(ROOT, "public-api.txt")
TARGET = os.path.join(ROOT, "target", "public-api")


def build():
    env = dict(os.environ)
    env["RUSTDOCFLAGS"] = "-Z unstable-options --output-format json"
    env["CARGO_TARGET_DIR"] = TARGET
    subprocess.run(
        ["cargo", "+nightly", "doc", "--no-deps", "--all-features", "--lib", "-q"],
        cwd=ROOT, env=env, check=True,
    )
    with open(os.path.join(TARGET, "doc", "sealpipe.json")) as f:
        return json.load(f)


def ty(t):
    """Renders a rustdoc JSON type the way it is written in Rust (close enough to diff)."""
    if t is None:
        return "()"
    (kind, v), = t.items()
    if kind == "resolved_path":
        return v["path"] + generic_args(v.get("args"))
    if kind == "primitive":
        return v
    if kind == "generic":
        return v
    if kind == "borrowed_ref":
        lt = (v["lifetime"] + " ") if v.get("lifetime") else ""
        return "&" + lt + ("mut " if v["is_mutable"] else "") + ty(v["type"])
    if kind == "raw_pointer":
        return ("*mut " if v["is_mutable"] else "*const ") + ty(v["type"])
    if kind == "slice":
        return "[" + ty(v) + "]"
    if kind == "array":
        return "[" + ty(v["type"]) + "; " + v["len"] + "]"
    if kind == "tuple":
        return "(" + ", ".join(ty(x) for x in v) + ")"
    if kind == "impl_trait":
        return "impl " + " + ".join(bound(b) for b in v)
    if kind == "dyn_trait":
        return "dyn " + " + ".join(p["trait"]["path"] + generic_args(p["trait"].get("args")) for p in v["traits"])
    if kind == "qualified_path":
        return "<" + ty(v["self_type"]) + ">::" + v["name"]
    if kind == "function_pointer":
        sig = v["sig"]
        return "fn(" + ", ".join(ty(a[1]) for a in sig["inputs"]) + ") -> " + ty(sig["output"])
    return kind


def generic_args(a):
    if not a:
        return ""
    if "angle_bracketed" in a:
        parts = []
        for g in a["angle_bracketed"]["args"]:
            (k, v), = g.items()
            parts.append(ty(v) if k == "type" else (v if k == "lifetime" else str(v)))
        for c in a["angle_bracketed"].get("constraints", []):
            parts.append(c["name"] + " = " + (ty(c["binding"]["equality"]["type"]) if "equality" in c["binding"] and "type" in c["binding"]["equality"] else "…"))
        return "<" + ", ".join(parts) + ">" if parts else ""
    if "parenthesized" in a:
        p = a["parenthesized"]
        return "(" + ", ".join(ty(x) for x in p["inputs"]) + ") -> " + ty(p.get("output"))
    return ""


def bound(b):
    if "trait_bound" in b:
        return b["trait_bound"]["trait"]["path"] + generic_args(b["trait_bound"]["trait"].get("args"))
    if "outlives" in b:
        return b["outlives"]
    return "?"


def generics(g):
    params = []
    for p in g["params"]:
        k = p["kind"]
        if "type" in k:
            if k["type"].get("is_synthetic"):
                continue
            bs = " + ".join(bound(b) for b in k["type"]["bounds"])
            params.append(p["name"] + (": " + bs if bs else ""))
        elif "lifetime" in k:
            params.append(p["name"])
        elif "const" in k:
            params.append("const " + p["name"] + ": " + ty(k["const"]["type"]))
    return "<" + ", ".join(params) + ">" if params else ""


def fn_sig(name, f):
    h = f["header"]
    prefix = ("const " if h["is_const"] else "") + ("async " if h["is_async"] else "") + ("unsafe " if h["is_unsafe"] else "")
    args = []
    for an, at in f["sig"]["inputs"]:
        if an == "self":
            args.append(ty(at).replace("&Self", "&self").replace("&mut Self", "&mut self") if at != {"generic": "Self"} else "self")
        else:
            args.append(an + ": " + ty(at))
    out = f["sig"]["output"]
    return prefix + "fn ", name + generics(f["generics"]) + "(" + ", ".join(args) + ")" + (" -> " + ty(out) if out else "")


def fn_line(path, name, f):
    prefix, rest = fn_sig(name, f)
    return prefix + path + "::" + rest


def listing(d):
    idx = d["index"]
    lines = set()
    seen = set()

    def item(i):
        return idx.get(str(i))

    def walk(i, path):
        it = item(i)
        if it is None or (i, path) in seen:
            return
        seen.add((i, path))
        (kind, inner), = it["inner"].items()
        name = it.get("name")
        here = path + "::" + name if name and kind != "use" else path
        if kind == "module":
            lines.add("mod " + here)
            for c in inner["items"]:
                c_it = item(c)
                if c_it is not None and c_it["visibility"] == "public":
                    walk(c, here)
        elif kind == "use":
            target = inner.get("id")
            alias = path + "::" + inner["name"]
            if inner.get("is_glob"):
                t = item(target)
                if t and "module" in t["inner"]:
                    for c in t["inner"]["module"]["items"]:
                        if item(c) and item(c)["visibility"] == "public":
                            walk(c, path)
                return
            if target is None or item(target) is None:
                lines.add("pub use " + alias + " = " + inner["source"])
                return
            t = item(target)
            if t["name"] != inner["name"]:
                lines.add("pub use " + alias + " = " + inner["source"])
            walk_named(target, path, inner["name"])
        else:
            walk_named(i, path, name)

    def walk_named(i, path, name):
        it = item(i)
        (kind, inner), = it["inner"].items()
        here = path + "::" + name
        if kind == "module":
            lines.add("mod " + here)
            for c in inner["items"]:
                if item(c) and item(c)["visibility"] == "public":
                    walk(c, here)
        elif kind == "struct":
            lines.add("struct " + here + generics(inner["generics"]))
            fields = inner["kind"].get("plain", {}).get("fields", []) if isinstance(inner["kind"], dict) else []
            for fid in fields:
                f = item(fid)
                if f and f["visibility"] == "public":
                    lines.add("field " + here + "::" + f["name"] + ": " + ty(f["inner"]["struct_field"]))
            impls(inner["impls"], here)
        elif kind == "enum":
            lines.add("enum " + here + generics(inner["generics"]))
            for vid in inner["variants"]:
                v = item(vid)
                vk = v["inner"]["variant"]["kind"]
                fields = ""
                if isinstance(vk, dict) and "struct" in vk:
                    fields = " { " + ", ".join(item(f)["name"] + ": " + ty(item(f)["inner"]["struct_field"]) for f in vk["struct"]["fields"]) + " }"
                elif isinstance(vk, dict) and "tuple" in vk:
                    fields = "(" + ", ".join(ty(item(f)["inner"]["struct_field"]) if f is not None else "_" for f in vk["tuple"]) + ")"
                lines.add("variant " + here + "::" + v["name"] + fields)
            impls(inner["impls"], here)
        elif kind == "trait":
            lines.add("trait " + here + generics(inner["generics"]))
            for m in inner["items"]:
                mi = item(m)
                if mi and "function" in mi["inner"]:
                    lines.add("trait " + fn_line(here, mi["name"], mi["inner"]["function"]))
        elif kind == "function":
            lines.add(fn_line(path, name, inner))
        elif kind == "constant":
            lines.add("const " + here + ": " + ty(inner["type"]))
        elif kind == "static":
            lines.add("static " + here + ": " + ty(inner["type"]))
        elif kind == "type_alias":
            lines.add("type " + here + generics(inner["generics"]) + " = " + ty(inner["type"]))
        elif kind == "macro":
            lines.add("macro " + here)
        else:
            lines.add(kind + " " + here)

    def impls(ids, here):
        for iid in ids:
            im = item(iid)
            if im is None:
                continue
            imp = im["inner"]["impl"]
            if imp.get("is_synthetic") or imp.get("blanket_impl") is not None:
                continue
            if imp["trait"] is None:
                for m in imp["items"]:
                    mi = item(m)
                    if mi and mi["visibility"] == "public":
                        if "function" in mi["inner"]:
                            lines.add(fn_line(here, mi["name"], mi["inner"]["function"]))
                        elif "assoc_const" in mi["inner"]:
                            lines.add("const " + here + "::" + mi["name"] + ": " + ty(mi["inner"]["assoc_const"]["type"]))
            else:
                tr = imp["trait"]
                lines.add("impl " + tr["path"] + generic_args(tr.get("args")) + " for " + ty(imp["for"]))

    walk(d["root"], "")
    return sorted(l.replace(" ::", " ") for l in lines)


def main():
    lines = listing(build())
    text = "".join(l + "\n" for l in lines)
    if "--bless" in sys.argv:
        with open(LISTING, "w") as f:
            f.write(text)
        print(f"public-api.txt: {len(lines)} items written")
        return 0
    try:
        with open(LISTING) as f:
            old = f.read()
    except FileNotFoundError:
        old = ""
    if old == text:
        print(f"public API unchanged ({len(lines)} items)")
        return 0
    import difflib
    sys.stdout.writelines(difflib.unified_diff(old.splitlines(True), text.splitlines(True), "public-api.txt", "now"))
    print("\nThe public API changed. If that is intended, run `python3 .ci/public_api.py --bless` and commit public-api.txt.")
    return 1


if __name__ == "__main__":
    sys.exit(main())
