//! A small blocking MQTT client for the black-box tests, on Tessera's own codec (the tests that
//! use real clients run mosquitto_pub/mosquitto_sub).

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use tessera_protocol::mqtt::{
    self, ConnAck, Connect, Options, Packet, Properties, Publish, QoS, Subscribe, Version,
};

pub struct MqttClient {
    stream: TcpStream,
    buf: Vec<u8>,
    pub version: Version,
    next_id: u16,
    /// Deliveries that arrived while [`Self::publish`] waited for its acknowledgement (the
    /// broker may deliver a client's own publish first), for the next [`Self::recv`].
    held: std::collections::VecDeque<Packet>,
}

impl MqttClient {
    /// Connects and sends CONNECT; returns the client and the server's CONNACK (or `None` when
    /// the server closed the connection instead).
    pub fn connect(
        port: u16,
        version: Version,
        client_id: &str,
        credentials: Option<(&str, &str)>,
    ) -> (MqttClient, Option<ConnAck>) {
        Self::connect_with(
            port,
            Connect {
                version,
                client_id: client_id.to_owned(),
                clean_start: true,
                keep_alive: 30,
                username: credentials.map(|(u, _)| u.to_owned()),
                password: credentials.map(|(_, p)| p.as_bytes().to_vec()),
                will: None,
                properties: Properties::default(),
            },
        )
    }

    /// Connects with a CONNECT of the caller's making.
    pub fn connect_with(port: u16, connect: Connect) -> (MqttClient, Option<ConnAck>) {
        let version = connect.version;
        let stream = TcpStream::connect(("127.0.0.1", port)).expect("connect to MQTT");
        stream
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut c = MqttClient {
            stream,
            buf: Vec::new(),
            version,
            next_id: 0,
            held: Default::default(),
        };
        c.send(&Packet::Connect(Box::new(connect)));
        let ack = match c.recv(Duration::from_secs(10)) {
            Some(Packet::ConnAck(a)) => Some(a),
            _ => None,
        };
        (c, ack)
    }

    pub fn send(&mut self, p: &Packet) {
        let mut out = Vec::new();
        mqtt::encode(p, self.version, &mut out);
        self.stream.write_all(&out).expect("write");
    }

    /// [`Self::send`] to a server that may have closed the connection: whether it was written.
    pub fn try_send(&mut self, p: &Packet) -> bool {
        let mut out = Vec::new();
        mqtt::encode(p, self.version, &mut out);
        self.stream.write_all(&out).is_ok()
    }

    pub fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("write");
    }

    fn id(&mut self) -> u16 {
        self.next_id = self.next_id.checked_add(1).unwrap_or(1);
        self.next_id
    }

    /// Subscribes and returns the SUBACK codes.
    pub fn subscribe(&mut self, filters: &[(&str, QoS)]) -> Vec<u8> {
        let packet_id = self.id();
        self.send(&Packet::Subscribe(Subscribe {
            packet_id,
            properties: Properties::default(),
            filters: filters
                .iter()
                .map(|(f, q)| ((*f).to_owned(), Options::qos(*q)))
                .collect(),
        }));
        match self.recv(Duration::from_secs(10)) {
            Some(Packet::SubAck(s)) => s.codes,
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    /// Publishes; with QoS 1 waits for the PUBACK and returns its reason code.
    pub fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool) -> Option<u8> {
        let packet_id = (qos != QoS::AtMostOnce).then(|| self.id());
        self.send(&Packet::Publish(Publish {
            dup: false,
            qos,
            retain,
            topic: topic.to_owned(),
            packet_id,
            properties: Properties::default(),
            payload: payload.to_vec(),
        }));
        if qos == QoS::AtMostOnce {
            return None;
        }
        loop {
            match self.recv_wire(Duration::from_secs(10)) {
                Some(Packet::PubAck(a)) => return Some(a.reason),
                Some(Packet::PubRec(a)) => return Some(a.reason),
                Some(p @ Packet::Publish(_)) => self.held.push_back(p),
                other => panic!("expected PUBACK, got {other:?}"),
            }
        }
    }

    /// The next packet within `wait`, or `None` (timeout or closed).
    pub fn recv(&mut self, wait: Duration) -> Option<Packet> {
        match self.held.pop_front() {
            Some(p) => Some(p),
            None => self.recv_wire(wait),
        }
    }

    /// The next packet read from the connection within `wait`.
    fn recv_wire(&mut self, wait: Duration) -> Option<Packet> {
        let deadline = Instant::now() + wait;
        loop {
            let state = Some(self.version);
            if let Ok(Some((p, used))) = mqtt::decode(&self.buf, state, 1 << 24) {
                self.buf.drain(..used);
                return Some(p);
            }
            if Instant::now() >= deadline {
                return None;
            }
            let mut chunk = [0u8; 4096];
            match self.stream.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) => {}
                Err(_) => return None,
            }
        }
    }

    /// The next PUBLISH within `wait` (other packets are skipped).
    pub fn next_publish(&mut self, wait: Duration) -> Option<Publish> {
        let deadline = Instant::now() + wait;
        while Instant::now() < deadline {
            if let Some(Packet::Publish(p)) = self.recv(deadline - Instant::now()) {
                return Some(p);
            }
        }
        None
    }
}
