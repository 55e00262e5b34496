//! The MQTT session state machine through `session`, over an in-memory transport: QoS 1 and 2
//! flows both ways, packet ids, and deliveries that go again when a kept session resumes.

use std::cell::RefCell;
use std::collections::VecDeque;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_lite::{AsyncRead, AsyncWrite};
use tessera_protocol::mqtt::{
    self, Ack, Connect, Packet, Properties, Publish, QoS, Subscribe, Version, subscribe::Options,
};
use tessera_storage::Value;
use tessera_storage::validate::WriteMode;

use crate::worker::Worker;
use crate::worker::testing::{ADMIN, with_worker};

const SCHEMA: &str = "type Dog @table @export { id: Long @primaryKey name: String }";

/// One direction of an in-memory connection.
#[derive(Default)]
struct Pipe {
    bytes: VecDeque<u8>,
    closed: bool,
    reader: Option<Waker>,
}

struct PipeReader(Rc<RefCell<Pipe>>);
struct PipeWriter(Rc<RefCell<Pipe>>);

fn pipe() -> (PipeWriter, PipeReader) {
    let p = Rc::new(RefCell::new(Pipe::default()));
    (PipeWriter(p.clone()), PipeReader(p))
}

impl AsyncRead for PipeReader {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut p = self.0.borrow_mut();
        if p.bytes.is_empty() {
            if p.closed {
                return Poll::Ready(Ok(0));
            }
            p.reader = Some(cx.waker().clone());
            return Poll::Pending;
        }
        let n = buf.len().min(p.bytes.len());
        for (slot, b) in buf.iter_mut().zip(p.bytes.drain(..n)) {
            *slot = b;
        }
        Poll::Ready(Ok(n))
    }
}

impl AsyncWrite for PipeWriter {
    fn poll_write(
        self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        let mut p = self.0.borrow_mut();
        if p.closed {
            return Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into()));
        }
        p.bytes.extend(buf);
        if let Some(w) = p.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        let mut p = self.0.borrow_mut();
        p.closed = true;
        if let Some(w) = p.reader.take() {
            w.wake();
        }
        Poll::Ready(Ok(()))
    }
}

impl Drop for PipeWriter {
    fn drop(&mut self) {
        let mut p = self.0.borrow_mut();
        p.closed = true;
        if let Some(w) = p.reader.take() {
            w.wake();
        }
    }
}

/// A client connected to a session running on this core.
struct Client {
    to_server: Option<PipeWriter>,
    from_server: PipeReader,
    received: Vec<u8>,
    version: Version,
}

impl Client {
    /// Starts a session and sends CONNECT as the test kernel's super user.
    fn connect(worker: &Rc<Worker>, client_id: &str, clean_start: bool) -> Client {
        let (to_server, server_rd) = pipe();
        let (server_wr, from_server) = pipe();
        let w = worker.clone();
        glommio::spawn_local(async move {
            super::session(&w, &crate::app::Peer::default(), server_rd, server_wr).await
        })
        .detach();
        let mut client = Client {
            to_server: Some(to_server),
            from_server,
            received: Vec::new(),
            version: Version::V311,
        };
        client.send(&Packet::Connect(Box::new(Connect {
            version: Version::V311,
            client_id: client_id.into(),
            clean_start,
            keep_alive: 60,
            username: Some(ADMIN.0.into()),
            password: Some(ADMIN.1.as_bytes().to_vec()),
            will: None,
            properties: Properties::default(),
        })));
        client
    }

    fn send(&mut self, p: &Packet) {
        let mut frame = Vec::new();
        mqtt::encode(p, self.version, &mut frame);
        let w = self.to_server.as_ref().expect("connected");
        let mut pipe = w.0.borrow_mut();
        pipe.bytes.extend(frame);
        if let Some(waker) = pipe.reader.take() {
            waker.wake();
        }
    }

    /// The next packet from the server (a hang fails the test after ten seconds).
    async fn next(&mut self) -> Packet {
        let read = async {
            loop {
                if let Some((p, used)) =
                    mqtt::decode(&self.received, Some(self.version), 1 << 20).expect("a packet")
                {
                    self.received.drain(..used);
                    return Ok(p);
                }
                let mut buf = [0u8; 4096];
                let n = futures_lite::AsyncReadExt::read(&mut self.from_server, &mut buf)
                    .await
                    .expect("reading");
                assert!(n > 0, "the server closed the connection");
                self.received.extend_from_slice(&buf[..n]);
            }
        };
        glommio::timer::timeout(Duration::from_secs(10), read)
            .await
            .expect("a packet within ten seconds")
    }

    /// Nothing arrives for a moment.
    async fn quiet(&mut self) {
        let got =
            glommio::timer::timeout(Duration::from_millis(100), async { Ok(self.next().await) })
                .await;
        assert!(got.is_err(), "unexpected {got:?}");
    }

    async fn subscribe(&mut self, filter: &str, qos: QoS) {
        self.send(&Packet::Subscribe(Subscribe {
            packet_id: 10,
            properties: Properties::default(),
            filters: vec![(filter.into(), Options::qos(qos))],
        }));
        match self.next().await {
            Packet::SubAck(a) => assert_eq!(a.codes, vec![qos as u8]),
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Closes the connection without DISCONNECT.
    fn drop_connection(&mut self) {
        self.to_server = None;
    }
}

async fn put_dog(worker: &Worker, id: i64, name: &str) {
    let table = worker.app.tables.export("Dog").expect("Dog").clone();
    let rec = Value::Object(vec![("name".into(), Value::String(name.into()))]);
    worker
        .write_record(&table, rec, Value::Int(id), WriteMode::Replace)
        .await
        .expect("a write");
}

fn publish_of(p: Packet) -> Publish {
    match p {
        Packet::Publish(p) => p,
        other => panic!("expected PUBLISH, got {other:?}"),
    }
}

#[test]
fn qos1_deliveries_are_numbered_and_go_again_when_the_session_resumes() {
    with_worker(SCHEMA, |worker| async move {
        let mut a = Client::connect(&worker, "c1", false);
        match a.next().await {
            Packet::ConnAck(c) => assert!(!c.session_present && c.code == 0),
            other => panic!("{other:?}"),
        }
        a.subscribe("Dog/1", QoS::AtLeastOnce).await;
        put_dog(&worker, 1, "Rex").await;
        let p = publish_of(a.next().await);
        assert_eq!(
            (p.topic.as_str(), p.qos, p.packet_id, p.dup),
            ("Dog/1", QoS::AtLeastOnce, Some(1), false)
        );
        assert_eq!(p.payload, br#"{"id":1,"name":"Rex"}"#);
        // Never acknowledged: the kept session owes it to the next connection.
        a.drop_connection();
        let mut b = Client::connect(&worker, "c1", false);
        match b.next().await {
            Packet::ConnAck(c) => assert!(c.session_present),
            other => panic!("{other:?}"),
        }
        let again = publish_of(b.next().await);
        assert_eq!((again.packet_id, again.dup), (Some(1), true));
        assert_eq!(again.payload, p.payload);
        b.send(&Packet::PubAck(Ack::new(1)));
        // The next delivery takes the next id; the acknowledged one does not come back.
        put_dog(&worker, 1, "Max").await;
        let next = publish_of(b.next().await);
        assert_eq!((next.packet_id, next.dup), (Some(2), false));
        b.send(&Packet::PubAck(Ack::new(2)));
        b.quiet().await;
        b.send(&Packet::Disconnect(Default::default()));
    });
}

#[test]
fn qos2_outbound_releases_and_a_received_one_goes_again_as_pubrel_only() {
    with_worker(SCHEMA, |worker| async move {
        let mut a = Client::connect(&worker, "c2", false);
        a.next().await;
        a.subscribe("Dog/+", QoS::ExactlyOnce).await;
        put_dog(&worker, 7, "Ada").await;
        let p = publish_of(a.next().await);
        assert_eq!((p.qos, p.packet_id), (QoS::ExactlyOnce, Some(1)));
        // PUBREC: the server releases.
        a.send(&Packet::PubRec(Ack::new(1)));
        match a.next().await {
            Packet::PubRel(r) => assert_eq!(r.packet_id, 1),
            other => panic!("expected PUBREL, got {other:?}"),
        }
        // The connection ends before PUBCOMP: only the release is owed.
        a.drop_connection();
        let mut b = Client::connect(&worker, "c2", false);
        b.next().await;
        match b.next().await {
            Packet::PubRel(r) => assert_eq!(r.packet_id, 1),
            other => panic!("expected PUBREL again, got {other:?}"),
        }
        b.send(&Packet::PubComp(Ack::new(1)));
        b.quiet().await;
    });
}

#[test]
fn inbound_qos2_publish_is_acknowledged_after_the_write_and_completed_on_release() {
    with_worker(SCHEMA, |worker| async move {
        let mut a = Client::connect(&worker, "c3", true);
        a.next().await;
        a.send(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::ExactlyOnce,
            retain: true,
            topic: "Dog/5".into(),
            packet_id: Some(42),
            properties: Properties::default(),
            payload: br#"{"name":"Bo"}"#.to_vec(),
        }));
        match a.next().await {
            Packet::PubRec(r) => assert_eq!((r.packet_id, r.reason), (42, 0)),
            other => panic!("expected PUBREC, got {other:?}"),
        }
        // Acknowledged after the write: it is there.
        let key = tessera_storage::shard::record_key(
            worker.app.tables.export("Dog").unwrap().id,
            &Value::Int(5),
        )
        .unwrap();
        assert!(worker.router.get(&key).unwrap().is_some());
        a.send(&Packet::PubRel(Ack::new(42)));
        match a.next().await {
            Packet::PubComp(c) => assert_eq!(c.packet_id, 42),
            other => panic!("expected PUBCOMP, got {other:?}"),
        }
        // A clean session keeps nothing: a new connection with the id starts afresh.
        a.drop_connection();
        let mut b = Client::connect(&worker, "c3", true);
        match b.next().await {
            Packet::ConnAck(c) => assert!(!c.session_present),
            other => panic!("{other:?}"),
        }
    });
}
