//! The QoS 1 and 2 deliveries of a connection that the client has not completed: numbered with
//! packet ids, freed by PUBACK (QoS 1), PUBREC then PUBCOMP (QoS 2), and handed back in sending
//! order when the session parks, to go again to the next connection (MQTT 3.1.1 and 5, 4.4).

use std::collections::{HashMap, VecDeque};

use super::backlog::{Pending, Redelivery};
use crate::realtime::Delivery;

/// The packet id that follows `id` (1 after 65,535: 0 is not a packet id).
pub fn next_packet_id(id: u16) -> u16 {
    id.checked_add(1).unwrap_or(1)
}

/// The uncompleted deliveries, by packet id, with their sending order and whether the client
/// has received them (QoS 2 PUBREC).
#[derive(Default)]
pub struct Unacked {
    sent: u64,
    by_id: HashMap<u16, Unacknowledged>,
}

struct Unacknowledged {
    /// Its place in the sending order.
    order: u64,
    delivery: Delivery,
    /// Whether the client answered PUBREC (QoS 2): only the PUBREL goes again.
    received: bool,
}

impl Unacked {
    /// Notes delivery `d` sent with packet id `id` (`received`: a QoS 2 delivery whose PUBREC
    /// came on an earlier connection, now waiting for PUBCOMP).
    pub fn sent(&mut self, id: u16, delivery: Delivery, received: bool) {
        self.sent += 1;
        let order = self.sent;
        self.by_id.insert(
            id,
            Unacknowledged {
                order,
                delivery,
                received,
            },
        );
    }

    /// Notes that the client has received QoS 2 delivery `id` (it answered PUBREC).
    pub fn received(&mut self, id: u16) {
        if let Some(u) = self.by_id.get_mut(&id) {
            u.received = true;
        }
    }

    /// Whether `id` was an uncompleted delivery (now completed).
    pub fn acked(&mut self, id: u16) -> bool {
        self.by_id.remove(&id).is_some()
    }

    /// How many deliveries are uncompleted.
    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// The uncompleted deliveries in the order they were sent, each to go again with its id.
    pub fn in_order(self) -> VecDeque<Pending> {
        let mut all: Vec<_> = self.by_id.into_iter().collect();
        all.sort_by_key(|(_, u)| u.order);
        all.into_iter()
            .map(|(id, u)| Pending {
                redelivery: Some(Redelivery {
                    id,
                    received: u.received,
                }),
                delivery: u.delivery,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use tessera_storage::shard::{Change, Event};

    use super::*;
    use crate::realtime::{Broadcast, Guarantee};

    fn delivery(version: u64, guarantee: Guarantee) -> Delivery {
        Delivery {
            options: 0,
            share: 0,
            change: Broadcast::new(Change {
                table: 1,
                key: vec![version as u8],
                event: Event::Delete,
                version,
            }),
            guarantee,
        }
    }

    #[test]
    fn packet_ids_skip_zero() {
        assert_eq!(next_packet_id(0), 1);
        assert_eq!(next_packet_id(41), 42);
        assert_eq!(next_packet_id(u16::MAX), 1);
    }

    #[test]
    fn qos1_is_completed_by_puback() {
        let mut u = Unacked::default();
        u.sent(7, delivery(1, Guarantee::AtLeastOnce), false);
        assert_eq!(u.len(), 1);
        assert!(u.acked(7));
        // A second PUBACK for the same id, or one for an id never sent, frees nothing.
        assert!(!u.acked(7));
        assert!(!u.acked(8));
        assert!(u.in_order().is_empty());
    }

    #[test]
    fn qos2_goes_again_as_pubrel_once_received() {
        let mut u = Unacked::default();
        u.sent(1, delivery(10, Guarantee::ExactlyOnce), false);
        u.sent(2, delivery(11, Guarantee::ExactlyOnce), false);
        // PUBREC for 2: the client has it; only the release is owed.
        u.received(2);
        let again: Vec<_> = u.in_order().into_iter().collect();
        assert_eq!(
            again.iter().map(|p| p.redelivery).collect::<Vec<_>>(),
            vec![
                Some(Redelivery {
                    id: 1,
                    received: false
                }),
                Some(Redelivery {
                    id: 2,
                    received: true
                }),
            ]
        );
        assert_eq!(again[1].delivery.change.version, 11);
    }

    #[test]
    fn redelivery_keeps_the_sending_order_not_the_id_order() {
        let mut u = Unacked::default();
        // Ids wrapped around: 65,535 was sent before 1 and 2.
        u.sent(u16::MAX, delivery(1, Guarantee::AtLeastOnce), false);
        u.sent(1, delivery(2, Guarantee::AtLeastOnce), false);
        u.sent(2, delivery(3, Guarantee::AtLeastOnce), false);
        assert!(u.acked(1));
        let order: Vec<_> = u
            .in_order()
            .into_iter()
            .map(|p| (p.redelivery.map(|r| r.id), p.delivery.change.version))
            .collect();
        assert_eq!(order, vec![(Some(u16::MAX), 1), (Some(2), 3)]);
    }

    #[test]
    fn a_redelivered_qos2_received_before_stays_received() {
        let mut u = Unacked::default();
        u.sent(5, delivery(1, Guarantee::ExactlyOnce), true);
        let p = u.in_order().pop_front().unwrap();
        assert_eq!(
            p.redelivery,
            Some(Redelivery {
                id: 5,
                received: true
            })
        );
        assert_eq!(p.delivery.guarantee, Guarantee::ExactlyOnce);
    }
}
