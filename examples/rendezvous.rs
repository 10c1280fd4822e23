//! Named rendezvous: a server binds an endpoint protected by a shared secret and serves
//! several client processes, each sending a sealed region; a client with the wrong secret
//! is refused, and both sides say why.
//!
//! ```text
//! cargo run --example rendezvous
//! ```
//!
//! The same binary plays both parts: run without arguments it is the server, and starts
//! its clients as `rendezvous --client NAME SECRET`.

use std::process::{Child, Command};
use std::time::Duration;

use sealpipe::{default_path, Channel, HandshakeConfig, Listener, Policy, Region, Secret};

const ENDPOINT: &str = "rendezvous-example";
const SECRET: &str = "6c1f0a9e2b7d4c3a8e5f1b0d9c2a7e4f";

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    if args.len() == 4 && args[1] == "--client" {
        return client(&args[2], &args[3]);
    }
    server()
}

fn config(secret: &str) -> sealpipe::Result<HandshakeConfig> {
    Ok(HandshakeConfig::new()
        .secret(Secret::new(secret.as_bytes())?)
        .timeout(Duration::from_secs(5)))
}

fn server() -> Result<(), Box<dyn std::error::Error>> {
    let mut listener = Listener::bind(default_path(ENDPOINT)?, &config(SECRET)?)?;
    println!("server: listening at {}", listener.path().display());

    let exe = std::env::current_exe()?;
    let clients = [
        ("alice", SECRET),
        ("mallory", "00000000000000000000000000000000"),
        ("bob", SECRET),
    ];
    let mut children: Vec<Child> = Vec::new();
    for (name, secret) in clients {
        children.push(
            Command::new(&exe)
                .args(["--client", name, secret])
                .spawn()?,
        );
        println!("server: started client {name}");
    }

    let mut served = 0;
    let mut refused = 0;
    while served + refused < clients.len() {
        match listener.accept_timeout(Duration::from_secs(10)) {
            Ok(channel) => {
                let peer = channel.peer_credentials().expect("set by the handshake");
                println!(
                    "server: handshake ok with pid {} (uid {})",
                    peer.pid, peer.uid
                );
                let msg = channel.recv_timeout(&Policy::immutable(), Duration::from_secs(5))?;
                let region = &msg.regions()[0];
                let bytes = region.as_bytes()?;
                let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
                let text = String::from_utf8_lossy(&bytes[..end]);
                println!(
                    "server: {} sent a {}-byte sealed region ({}): {text:?}",
                    String::from_utf8_lossy(msg.payload()),
                    region.len(),
                    region.seals()
                );
                channel.send_timeout(b"thanks", &[], Duration::from_secs(5))?;
                served += 1;
            }
            // Errors about one client; the listener goes on serving.
            Err(
                e @ (sealpipe::Error::Handshake { .. }
                | sealpipe::Error::PeerClosed
                | sealpipe::Error::Timeout),
            ) => {
                println!("server: refused a client: {e}");
                refused += 1;
            }
            Err(e) => return Err(e.into()),
        }
    }
    for mut child in children {
        child.wait()?;
    }
    println!("server: served {served}, refused {refused}; removing the endpoint");
    println!("server stats: {}", listener.stats());
    Ok(())
}

fn client(name: &str, secret: &str) -> Result<(), Box<dyn std::error::Error>> {
    let path = default_path(ENDPOINT)?;
    let channel = match Channel::connect(&path, &config(secret)?) {
        Ok(c) => c,
        Err(e) => {
            println!("{name}: connection refused: {e}");
            return Ok(());
        }
    };
    println!("{name}: connected and authenticated");
    let text = format!("greetings from {name}");
    let mut region = Region::new(4096)?;
    region.write_at(0, text.as_bytes())?;
    let region = region.seal()?;
    channel.send_timeout(name.as_bytes(), &[&region], Duration::from_secs(5))?;
    let reply = channel.recv_timeout(&Policy::immutable(), Duration::from_secs(5))?;
    println!(
        "{name}: server replied {:?}",
        String::from_utf8_lossy(reply.payload())
    );
    Ok(())
}
