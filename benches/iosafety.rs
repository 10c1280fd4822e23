//! Cost of the I/O-safety tools against the plain paths they replace:
//! `GuardedMap::read_at` (a copy inside `hw_exception::catch`) vs `RegionView::read_at`
//! (the same volatile copy, unguarded), and `PositionalFile` (pread) vs `File` (read).
use std::io::{Read, Seek, SeekFrom};
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use sealpipe::{verify, GuardedMap, Policy, PositionalFile, Region};

fn reads(c: &mut Criterion) {
    let len = 1 << 20;
    let mut region = Region::new(len).unwrap();
    region.write_at(0, &vec![7u8; len]).unwrap();
    let sealed = region.seal().unwrap();
    let view = verify(
        sealed.try_clone().unwrap().into_fd(),
        len as u64,
        &Policy::immutable(),
    )
    .unwrap();
    let guarded = GuardedMap::new(sealed.try_clone().unwrap().into_fd()).unwrap();
    let positional = PositionalFile::from(sealed.try_clone().unwrap().into_fd());
    let mut file = std::fs::File::from(sealed.try_clone().unwrap().into_fd());

    let mut g = c.benchmark_group("read");
    g.warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1))
        .sample_size(30);
    for size in [64usize, 4096, 256 * 1024] {
        let mut buf = vec![0u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_function(BenchmarkId::new("region_view", size), |b| {
            b.iter(|| view.read_at(4096, &mut buf).unwrap())
        });
        g.bench_function(BenchmarkId::new("guarded_map", size), |b| {
            b.iter(|| guarded.read_at(4096, &mut buf).unwrap())
        });
        g.bench_function(BenchmarkId::new("positional_pread", size), |b| {
            b.iter(|| positional.read_exact_at(4096, &mut buf).unwrap())
        });
        g.bench_function(BenchmarkId::new("file_seek_read", size), |b| {
            b.iter(|| {
                file.seek(SeekFrom::Start(4096)).unwrap();
                file.read_exact(&mut buf).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, reads);
criterion_main!(benches);
