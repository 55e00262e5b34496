//! An MQTT load generator: N publishers and M subscribers on one glommio executor, QoS 0 or 1,
//! fan-out (every subscriber subscribes to every topic) or one-to-one (publisher i to subscriber
//! i), closed loop (each publisher keeps at most `--window` messages not yet received by every
//! subscriber: the sustainable delivered rate) or open loop at a fixed `--rate` (latency at a
//! given load). Payloads carry the publisher's send time, so subscribers measure end-to-end
//! latency on this host's clock. `--idle N` instead holds N idle connections open.
//!
//! Topics are `<topic-prefix>/<k>` (default `Dog/<k>`, a record path on Tessera and Harper).
//! Prints one line `MQTT_LOAD {...}` with the results.
//!
//! Compatible mode: arguments in mqtt-bench's style (`-broker tcp://host:port -clients N
//! -count N -qos N -topic T -size N -username U -password P -action pub|sub`) are accepted too.

use std::cell::RefCell;
use std::rc::Rc;
use std::time::{Duration, Instant};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use glommio::sync::Semaphore;
use glommio::{LocalExecutorBuilder, Placement};
use tessera_protocol::mqtt::{
    self, Ack, Connect, Options, Packet, Properties, Publish, QoS, Subscribe, Version,
};

#[derive(Debug, Clone)]
struct Args {
    host: String,
    port: u16,
    user: Option<String>,
    password: Option<String>,
    version: Version,
    pubs: usize,
    subs: usize,
    qos: QoS,
    one_to_one: bool,
    topics: usize,
    prefix: String,
    rate: f64,
    window: usize,
    duration: Duration,
    size: usize,
    idle: usize,
    max_msgs: u64,
}

impl Default for Args {
    fn default() -> Self {
        Args {
            host: "127.0.0.1".into(),
            port: 1883,
            user: std::env::var("BENCH_USER").ok(),
            password: std::env::var("BENCH_PASSWORD").ok(),
            version: Version::V311,
            pubs: 10,
            subs: 100,
            qos: QoS::AtMostOnce,
            one_to_one: false,
            topics: 1,
            prefix: "Dog".into(),
            rate: 0.0,
            window: 100,
            duration: Duration::from_secs(10),
            size: 64,
            idle: 0,
            max_msgs: u64::MAX,
        }
    }
}

const USAGE: &str = "usage: mqtt_load [--host H] [--port P] [--user U] [--password W] [--mqtt5]
  [--pubs N] [--subs M] [--qos 0|1] [--one-to-one] [--topics K] [--topic-prefix T]
  [--rate MSGS_PER_S] [--window W] [--duration S] [--size BYTES] [--max-msgs N] [--idle N]
  or mqtt-bench style: -broker tcp://H:P -clients N -count N -qos N -topic T -size N
  -username U -password P";

fn parse_args() -> Result<Args, String> {
    let mut a = Args::default();
    let argv: Vec<String> = std::env::args().skip(1).collect();
    let mut i = 0;
    let mut compat_action = None;
    while i < argv.len() {
        let flag = argv[i].as_str();
        let value = |i: usize| {
            argv.get(i + 1)
                .cloned()
                .ok_or(format!("{flag} needs a value"))
        };
        let num = |i: usize| -> Result<f64, String> {
            value(i)?
                .parse::<f64>()
                .map_err(|_| format!("{flag}: not a number"))
        };
        let mut step = 2;
        match flag {
            "--host" => a.host = value(i)?,
            "--port" => a.port = num(i)? as u16,
            "--user" | "-username" => a.user = Some(value(i)?),
            "--password" | "-password" => a.password = Some(value(i)?),
            "--mqtt5" => {
                a.version = Version::V5;
                step = 1;
            }
            "--pubs" => a.pubs = num(i)? as usize,
            "--subs" => a.subs = num(i)? as usize,
            "--qos" | "-qos" => {
                a.qos = QoS::from_bits(num(i)? as u8).map_err(|_| "bad QoS".to_string())?
            }
            "--one-to-one" => {
                a.one_to_one = true;
                step = 1;
            }
            "--topics" => a.topics = (num(i)? as usize).max(1),
            "--topic-prefix" | "-topic" => a.prefix = value(i)?,
            "--rate" => a.rate = num(i)?,
            "--window" => a.window = num(i)? as usize,
            "--duration" => a.duration = Duration::from_secs_f64(num(i)?),
            "--size" | "-size" => a.size = (num(i)? as usize).max(24),
            "--max-msgs" | "-count" => a.max_msgs = num(i)? as u64,
            "--idle" => a.idle = num(i)? as usize,
            "-clients" => {
                let n = num(i)? as usize;
                a.pubs = n;
                a.subs = n;
            }
            "-broker" => {
                let b = value(i)?;
                let hp = b.trim_start_matches("tcp://");
                let (h, p) = hp.rsplit_once(':').ok_or("-broker tcp://host:port")?;
                a.host = h.to_owned();
                a.port = p.parse().map_err(|_| "bad -broker port")?;
            }
            "-action" => compat_action = Some(value(i)?),
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
        i += step;
    }
    match compat_action.as_deref() {
        Some("pub") => a.subs = 0,
        Some("sub") => a.pubs = 0,
        _ => {}
    }
    Ok(a)
}

/// Shared counters of a run.
#[derive(Default)]
struct Stats {
    sent: u64,
    received: u64,
    latencies_us: Vec<u32>,
    /// Messages still to be received by this many subscribers, by (publisher, sequence).
    pending: hashbrown::HashMap<(u16, u64), usize>,
    connected: usize,
}

fn connect_packet(a: &Args, id: &str) -> Packet {
    Packet::Connect(Box::new(Connect {
        version: a.version,
        client_id: id.to_owned(),
        clean_start: true,
        keep_alive: 60,
        username: a.user.clone(),
        password: a.password.clone().map(String::into_bytes),
        will: None,
        properties: Properties::default(),
    }))
}

/// A connected client: its stream and undecoded input, `buf[start..end]`.
struct Client {
    stream: TcpStream,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    version: Version,
}

/// Largest packet a client accepts.
const MAX_PACKET: usize = 1 << 24;

impl Client {
    async fn connect(a: &Args, id: &str) -> std::io::Result<Client> {
        let stream = TcpStream::connect((a.host.as_str(), a.port)).await?;
        stream.set_nodelay(true)?;
        let mut c = Client {
            stream,
            buf: vec![0; 64 * 1024],
            start: 0,
            end: 0,
            version: a.version,
        };
        c.send(&connect_packet(a, id)).await?;
        match c.next().await? {
            Packet::ConnAck(ack) if ack.code == 0 => Ok(c),
            other => Err(std::io::Error::other(format!("refused: {other:?}"))),
        }
    }

    async fn send(&mut self, p: &Packet) -> std::io::Result<()> {
        let mut out = Vec::with_capacity(128);
        mqtt::encode(p, self.version, &mut out);
        self.stream.write_all(&out).await
    }

    /// Reads once into the buffer, after the input not yet used (moved to the front, and the
    /// buffer doubled if a packet needs more room).
    async fn fill(&mut self) -> std::io::Result<()> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            self.buf.resize(self.buf.len() * 2, 0);
        }
        let n = self.stream.read(&mut self.buf[self.end..]).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        self.end += n;
        Ok(())
    }

    async fn next(&mut self) -> std::io::Result<Packet> {
        loop {
            match mqtt::decode(
                &self.buf[self.start..self.end],
                Some(self.version),
                MAX_PACKET,
            ) {
                Ok(Some((p, used))) => {
                    self.start += used;
                    return Ok(p);
                }
                Ok(None) => self.fill().await?,
                Err(e) => return Err(std::io::Error::other(e.to_string())),
            }
        }
    }
}

fn topic(a: &Args, k: usize) -> String {
    format!("{}/{}", a.prefix, k + 1)
}

/// Subscriber `i`: receives until told to stop, recording latency and releasing windows.
async fn subscriber(
    a: Rc<Args>,
    i: usize,
    stats: Rc<RefCell<Stats>>,
    windows: Rc<Vec<Rc<Semaphore>>>,
    start: Instant,
    ready: Rc<Semaphore>,
) {
    let Ok(mut c) = Client::connect(&a, &format!("load-sub-{i}")).await else {
        eprintln!("subscriber {i}: cannot connect");
        ready.signal(1);
        return;
    };
    let filters: Vec<(String, Options)> = if a.one_to_one {
        vec![(topic(&a, i % a.topics), Options::qos(a.qos))]
    } else {
        (0..a.topics)
            .map(|k| (topic(&a, k), Options::qos(a.qos)))
            .collect()
    };
    let _ = c
        .send(&Packet::Subscribe(Subscribe {
            packet_id: 1,
            properties: Properties::default(),
            filters,
        }))
        .await;
    loop {
        match c.next().await {
            Ok(Packet::SubAck(_)) => break,
            Ok(_) => {}
            Err(_) => {
                ready.signal(1);
                return;
            }
        }
    }
    stats.borrow_mut().connected += 1;
    ready.signal(1);
    // Every message buffered is counted where it lies (no copy, no decode into a `Packet`): at
    // half of Tessera's peak this one thread receives about 450,000 messages a second, and its
    // own delays would count as the broker's latency.
    let mut acks = Vec::new();
    loop {
        acks.clear();
        loop {
            let raw = match mqtt::split(&c.buf[c.start..c.end], MAX_PACKET) {
                Ok(Some(raw)) => raw,
                Ok(None) => break,
                Err(_) => return,
            };
            if raw.first >> 4 == 3 {
                let Ok(p) = mqtt::publish::read_ref(raw.first & 0x0f, raw.body, c.version) else {
                    return;
                };
                if let (QoS::AtLeastOnce, Some(id)) = (p.qos, p.packet_id) {
                    mqtt::encode(&Packet::PubAck(Ack::new(id)), c.version, &mut acks);
                }
                record(p.payload, &stats, &windows, start);
            }
            c.start += raw.len;
        }
        // One write for every acknowledgement of the batch.
        if !acks.is_empty() && c.stream.write_all(&acks).await.is_err() {
            return;
        }
        if c.fill().await.is_err() {
            return;
        }
    }
}

/// Counts one received message: its latency, and its publisher's window once every subscriber
/// has it.
fn record(payload: &[u8], stats: &RefCell<Stats>, windows: &[Rc<Semaphore>], start: Instant) {
    if payload.len() < 19 || payload[0] != b'T' {
        return; // a current record, not one of ours
    }
    let publisher = u16::from_be_bytes([payload[1], payload[2]]);
    let seq = u64::from_be_bytes(payload[3..11].try_into().unwrap_or_default());
    let sent_ns = u64::from_be_bytes(payload[11..19].try_into().unwrap_or_default());
    let now_ns = start.elapsed().as_nanos() as u64;
    let mut s = stats.borrow_mut();
    s.received += 1;
    if s.latencies_us.len() < 5_000_000 {
        s.latencies_us
            .push((now_ns.saturating_sub(sent_ns) / 1000).min(u32::MAX as u64) as u32);
    }
    if let Some(left) = s.pending.get_mut(&(publisher, seq)) {
        *left -= 1;
        if *left == 0 {
            s.pending.remove(&(publisher, seq));
            if let Some(w) = windows.get(publisher as usize) {
                w.signal(1);
            }
        }
    }
}

/// Publisher `i`: publishes until the deadline, closed loop (window) or at a fixed rate.
async fn publisher(
    a: Rc<Args>,
    i: usize,
    stats: Rc<RefCell<Stats>>,
    window: Rc<Semaphore>,
    start: Instant,
    deadline: Instant,
    receivers: usize,
) {
    let Ok(mut c) = Client::connect(&a, &format!("load-pub-{i}")).await else {
        eprintln!("publisher {i}: cannot connect");
        return;
    };
    let interval = (a.rate > 0.0).then(|| Duration::from_secs_f64(a.pubs as f64 / a.rate));
    let mut next_at = Instant::now();
    let mut seq: u64 = 0;
    let mut packet_id: u16 = 0;
    let mut out = Vec::with_capacity(64 * 1024);
    while Instant::now() < deadline && seq < a.max_msgs {
        if let Some(iv) = interval {
            let now = Instant::now();
            if next_at > now {
                glommio::timer::sleep(next_at - now).await;
            }
            next_at += iv;
        } else if receivers > 0 {
            // Lost messages never release their window: stop at the deadline regardless.
            let left = deadline.saturating_duration_since(Instant::now());
            let acquired =
                glommio::timer::timeout(left, async { Ok(window.acquire(1).await.is_ok()) }).await;
            if !matches!(acquired, Ok(true)) {
                break;
            }
        }
        seq += 1;
        let mut payload = Vec::with_capacity(a.size);
        payload.push(b'T');
        payload.extend_from_slice(&(i as u16).to_be_bytes());
        payload.extend_from_slice(&seq.to_be_bytes());
        payload.extend_from_slice(&(start.elapsed().as_nanos() as u64).to_be_bytes());
        payload.resize(a.size, b'.');
        if receivers > 0 {
            stats
                .borrow_mut()
                .pending
                .insert((i as u16, seq), receivers);
        }
        let qos1 = a.qos != QoS::AtMostOnce;
        if qos1 {
            packet_id = packet_id.checked_add(1).unwrap_or(1);
        }
        out.clear();
        let k = if a.one_to_one {
            i % a.topics
        } else {
            seq as usize % a.topics
        };
        mqtt::encode(
            &Packet::Publish(Publish {
                dup: false,
                qos: a.qos,
                retain: false,
                topic: topic(&a, k),
                packet_id: qos1.then_some(packet_id),
                properties: Properties::default(),
                payload,
            }),
            a.version,
            &mut out,
        );
        if c.stream.write_all(&out).await.is_err() {
            break;
        }
        stats.borrow_mut().sent += 1;
        if qos1 {
            // Wait for this message's PUBACK (one in flight per publisher for QoS 1).
            let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(1);
            let acked = glommio::timer::timeout(left, async {
                loop {
                    match c.next().await {
                        Ok(Packet::PubAck(_)) => return Ok(true),
                        Ok(_) => {}
                        Err(_) => return Ok(false),
                    }
                }
            })
            .await;
            if !matches!(acked, Ok(true)) {
                return;
            }
        }
    }
}

fn percentile(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let at = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    f64::from(sorted[at]) / 1000.0
}

async fn run(a: Args) {
    let a = Rc::new(a);
    let start = Instant::now();
    if a.idle > 0 {
        let mut held = Vec::with_capacity(a.idle);
        for i in 0..a.idle {
            match Client::connect(&a, &format!("idle-{i}")).await {
                Ok(c) => held.push(c),
                Err(e) => {
                    eprintln!("idle connection {i}: {e}");
                    break;
                }
            }
        }
        println!(
            "MQTT_LOAD {{\"idle_connections\":{},\"seconds\":{:.2}}}",
            held.len(),
            start.elapsed().as_secs_f64()
        );
        glommio::timer::sleep(a.duration).await;
        return;
    }
    let stats = Rc::new(RefCell::new(Stats::default()));
    let windows: Rc<Vec<Rc<Semaphore>>> = Rc::new(
        (0..a.pubs)
            .map(|_| Rc::new(Semaphore::new(a.window as u64)))
            .collect(),
    );
    let ready = Rc::new(Semaphore::new(0));
    let mut tasks = Vec::new();
    for i in 0..a.subs {
        tasks.push(glommio::spawn_local(subscriber(
            a.clone(),
            i,
            stats.clone(),
            windows.clone(),
            start,
            ready.clone(),
        )));
    }
    let _ = ready.acquire(a.subs as u64).await;
    // Each message is expected by every subscriber of its topic.
    let receivers = if a.one_to_one {
        a.subs / a.pubs.max(1)
    } else {
        a.subs
    };
    let began = Instant::now();
    let deadline = began + a.duration;
    let pubs: Vec<_> = (0..a.pubs)
        .map(|i| {
            glommio::spawn_local(publisher(
                a.clone(),
                i,
                stats.clone(),
                windows[i].clone(),
                start,
                deadline,
                receivers,
            ))
        })
        .collect();
    for p in pubs {
        p.await;
    }
    // Give the last messages a moment to arrive, then report.
    glommio::timer::sleep(Duration::from_millis(500)).await;
    let elapsed = began.elapsed().as_secs_f64() - 0.5;
    let s = {
        let mut s = stats.borrow_mut();
        s.latencies_us.sort_unstable();
        std::mem::take(&mut *s)
    };
    let expected = s.sent * receivers as u64;
    println!(
        "MQTT_LOAD {{\"pubs\":{},\"subs\":{},\"qos\":{},\"mode\":\"{}\",\"rate\":{},\"sent\":{},\"received\":{},\"expected\":{},\"loss\":{:.6},\"published_per_s\":{:.1},\"delivered_per_s\":{:.1},\"p50_ms\":{:.3},\"p90_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3},\"subscribers_connected\":{}}}",
        a.pubs,
        a.subs,
        a.qos as u8,
        if a.one_to_one {
            "one-to-one"
        } else {
            "fan-out"
        },
        a.rate,
        s.sent,
        s.received,
        expected,
        if expected > 0 {
            1.0 - s.received as f64 / expected as f64
        } else {
            0.0
        },
        s.sent as f64 / elapsed,
        s.received as f64 / elapsed,
        percentile(&s.latencies_us, 0.50),
        percentile(&s.latencies_us, 0.90),
        percentile(&s.latencies_us, 0.99),
        percentile(&s.latencies_us, 1.0),
        s.connected,
    );
    for t in tasks {
        t.cancel().await;
    }
}

fn main() {
    let a = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let ex = LocalExecutorBuilder::new(Placement::Unbound)
        .name("mqtt-load")
        .spawn(move || run(a))
        .expect("executor");
    ex.join().expect("run");
}
