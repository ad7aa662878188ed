//! Segment codec throughput: encodes 1,000,000 log-like events (~150-byte
//! messages) into one segment and decodes it, printing MB/s of raw message
//! text and the compression ratio.
//!
//! Run with `cargo bench -p custos-store --bench segment_codec`.

use custos_model::{AgentId, Category, Event, Level, SegmentId, TableName, Value, WorkspaceId};
use custos_store::{decode_segment, decode_segment_with, DataKey, KeyProvider, SegmentBuilder, ServiceKeystore};
use std::time::Instant;

const EVENTS: usize = 1_000_000;

/// A small deterministic generator (xorshift), so runs are comparable.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn main() {
    let table = TableName::new("logs").expect("valid table name");
    let agents: Vec<AgentId> = (0..50).map(|_| AgentId::new()).collect();
    let units = ["sshd.service", "nginx.service", "kubelet.service", "cron.service", "systemd-journald.service"];
    let verbs = ["accepted", "rejected", "completed", "started", "timed out", "retrying"];
    let paths = ["/api/v1/items", "/api/v1/users", "/healthz", "/api/v2/orders", "/static/app.js"];
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let base = 1_718_000_000_000_000i64;
    let events: Vec<(AgentId, Event)> = (0..EVENTS)
        .map(|i| {
            let unit = units[rng.below(units.len() as u64) as usize];
            let status = [200, 200, 200, 201, 304, 404, 500][rng.below(7) as usize];
            let mut message = format!(
                "{unit}[{pid}]: request {verb} method=GET path={path}/{id} status={status} latency_ms={lat} \
                 request_id={rid:016x} client=10.{a}.{b}.{c}",
                pid = 1000 + rng.below(5000),
                verb = verbs[rng.below(verbs.len() as u64) as usize],
                path = paths[rng.below(paths.len() as u64) as usize],
                id = rng.below(100_000),
                lat = rng.below(2000),
                rid = rng.next(),
                a = rng.below(256),
                b = rng.below(256),
                c = rng.below(256),
            );
            message.truncate(150);
            let attrs = [
                ("pid".to_string(), Value::Int(1000 + (i as i64 % 5000))),
                ("status".to_string(), Value::Int(status)),
                ("unit".to_string(), Value::Str(unit.to_string())),
            ]
            .into_iter()
            .collect();
            let agent = agents[rng.below(agents.len() as u64) as usize];
            // Mostly ordered with some jitter, as events arrive from many agents.
            let time = base + i as i64 * 1000 + rng.below(50_000) as i64;
            let event = Event {
                table: table.clone(),
                time,
                level: Level::Enhanced,
                category: Category::Logs,
                host: format!("host-{:03}", rng.below(200)),
                message,
                attrs,
            };
            (agent, event)
        })
        .collect();
    let message_bytes: usize = events.iter().map(|(_, e)| e.message.len()).sum();
    let mb = message_bytes as f64 / 1e6;

    let start = Instant::now();
    let mut builder = SegmentBuilder::new(WorkspaceId::new(), table);
    for (agent, event) in &events {
        builder.push(*agent, event);
    }
    let approx = builder.approx_bytes();
    let push_secs = start.elapsed().as_secs_f64();
    let encoded = builder.finish(SegmentId::new()).expect("encode");
    let encode_secs = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let decoded = decode_segment(&encoded.bytes).expect("decode");
    let decode_secs = start.elapsed().as_secs_f64();
    let rows: usize = decoded.batches.iter().map(|b| b.num_rows()).sum();
    assert_eq!(rows, EVENTS);

    let seg = encoded.bytes.len() as f64;
    println!("events:             {EVENTS}");
    println!("raw message text:   {mb:.1} MB (avg {} bytes)", message_bytes / EVENTS);
    println!("segment size:       {:.1} MB in {} batches", seg / 1e6, decoded.batches.len());
    println!(
        "encode:             {encode_secs:.2} s = {:.0} MB/s of message text (push {push_secs:.2} s, sort+compress {:.2} s)",
        mb / encode_secs,
        encode_secs - push_secs
    );
    println!("decode:             {decode_secs:.2} s = {:.0} MB/s of message text", mb / decode_secs);
    println!("compression ratio:  {:.1}x vs message text, {:.1}x vs approx in-memory event size", message_bytes as f64 / seg, approx as f64 / seg);

    // Encryption at rest: the same events encoded and decoded plain and
    // sealed (AES-256-GCM under a per-segment data key, wrapped by a
    // service keystore), alternating, fastest of 3 each.
    let dir = tempfile::tempdir().expect("tempdir");
    let keys = ServiceKeystore::open(&dir.path().join("keystore.json"), DataKey::generate().expect("key")).expect("keystore");
    let ws = WorkspaceId::new();
    keys.current(ws).expect("workspace key");
    let encode = |sealed: bool| {
        let start = Instant::now();
        let mut b = SegmentBuilder::new(ws, TableName::new("logs").expect("table"));
        for (agent, event) in &events {
            b.push(*agent, event);
        }
        let e = if sealed { b.finish_sealed(SegmentId::new(), &keys) } else { b.finish(SegmentId::new()) }.expect("encode");
        (start.elapsed().as_secs_f64(), e.bytes)
    };
    let (mut enc_plain, mut enc_sealed, mut dec_plain, mut dec_sealed) = (f64::MAX, f64::MAX, f64::MAX, f64::MAX);
    for _ in 0..3 {
        let (t, plain) = encode(false);
        enc_plain = enc_plain.min(t);
        let (t, sealed) = encode(true);
        enc_sealed = enc_sealed.min(t);
        let start = Instant::now();
        decode_segment(&plain).expect("decode plain");
        dec_plain = dec_plain.min(start.elapsed().as_secs_f64());
        let start = Instant::now();
        decode_segment_with(&sealed, None, Some(&keys)).expect("decode sealed");
        dec_sealed = dec_sealed.min(start.elapsed().as_secs_f64());
    }
    println!(
        "encryption at rest: encode {enc_plain:.3} s plain, {enc_sealed:.3} s sealed (x{:.3}); decode {dec_plain:.3} s plain, {dec_sealed:.3} s sealed (x{:.3})",
        enc_sealed / enc_plain,
        dec_sealed / dec_plain
    );
}
