//! Cost of establishing an authenticated named connection: `Channel::connect` against a
//! `Listener` (both in this process, on two threads), with and without a shared secret.
//! Each iteration is one full connect + handshake + accept.

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, Criterion};
use sealpipe::{Channel, HandshakeConfig, Listener, Secret};

fn connect_accept(c: &mut Criterion) {
    let dir = std::env::temp_dir().join(format!("sealpipe-bench-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir(&dir).unwrap();
    let secret = || Secret::new(&[7u8; 32]).unwrap();
    for (name, config) in [
        ("handshake/no_secret", HandshakeConfig::new()),
        ("handshake/secret", HandshakeConfig::new().secret(secret())),
    ] {
        let path = dir.join(name.replace('/', "_"));
        let mut listener = Listener::bind(&path, &config).unwrap();
        let (stop_tx, stop_rx) = mpsc::channel::<()>();
        let server = thread::spawn(move || loop {
            match listener.accept_timeout(Duration::from_millis(50)) {
                Ok(ch) => drop(ch),
                Err(sealpipe::Error::Timeout) if stop_rx.try_recv().is_ok() => break,
                Err(sealpipe::Error::Timeout) => {}
                Err(e) => panic!("{e}"),
            }
        });
        c.bench_function(name, |b| {
            b.iter(|| Channel::connect(&path, &config).unwrap());
        });
        stop_tx.send(()).unwrap();
        server.join().unwrap();
    }
    let _ = std::fs::remove_dir_all(&dir);
}

criterion_group!(benches, connect_accept);
criterion_main!(benches);
