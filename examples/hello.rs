//! The shortest complete use of sealpipe: one sealed region through an in-process pair.
//!
//! Run with `cargo run --example hello`.

use sealpipe::{Channel, Policy, Region};

fn main() -> sealpipe::Result<()> {
    let (producer, consumer) = Channel::pair()?;

    // Producer: create a region, fill it, seal it immutable, send it.
    let mut region = Region::new(4096)?;
    region.write_at(0, b"hello through a sealed memfd")?;
    let region = region.seal()?;
    producer.send(b"greeting", &[&region])?;

    // Consumer: receive; sealpipe verifies seals and size, then maps read-only.
    let msg = consumer.recv(&Policy::immutable())?;
    let view = &msg.regions()[0];
    let text = &view.as_bytes()?[..28];
    println!(
        "{}: {:?} ({} bytes, seals {})",
        String::from_utf8_lossy(msg.payload()),
        String::from_utf8_lossy(text),
        view.len(),
        view.seals()
    );
    println!("stats: {}", consumer.stats());
    Ok(())
}
