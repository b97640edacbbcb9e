//! A peer that sends garbage, truncated frames or frames of the wrong version
//! gets an error, never a panic; corrupt checkpoints are refused.

use proptest::prelude::*;
use spate_engine::plan::{Incarnation, InstanceId};
use spate_engine::stamp::merge::{write_tuple, Merge};
use spate_engine::stamp::Stamp;
use spate_engine::state::{Checkpoint, KeyRange, KeyedState, OutputBuffer};
use spate_engine::wire::control::{
    self, BackupShipment, ShipmentHeader, ToCoordinator, ToHolder, ToWorker,
};
use spate_engine::wire::data::{read_batch, read_hello, write_batch, write_hello, ChannelHello};

fn checkpoint() -> Checkpoint {
    let mut state: KeyedState<u64, String> = KeyedState::default();
    for k in 0..50u64 {
        *state.get_or_default(k) = format!("value {k}");
    }
    let mut buffer = OutputBuffer::default();
    buffer.push(3, Stamp(9), &b"batch"[..]);
    Checkpoint {
        operator: "op".into(),
        key_range: KeyRange::FULL,
        frontier: Stamp(9),
        entries: state.snapshot().unwrap(),
        output_buffer: buffer,
        operator_state: vec![7; 5],
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn data_frames_of_random_bytes_are_errors_not_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = read_hello(&mut &bytes[..]);
        let mut r = &bytes[..];
        while let Ok(Some(_)) = read_batch(&mut r) {}
    }

    #[test]
    fn control_messages_of_random_bytes_are_errors_not_panics(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        let _ = control::read_hello(&mut &bytes[..]);
        let _ = control::recv::<ToWorker>(&mut &bytes[..]);
        let _ = control::recv::<ToCoordinator>(&mut &bytes[..]);
    }

    #[test]
    fn random_batch_bodies_never_corrupt_the_merge(bytes in prop::collection::vec(any::<u8>(), 0..512), mark in any::<u64>()) {
        let mut merge = Merge::new(2, Stamp::ZERO);
        if merge.push(0, bytes, Stamp(mark)).is_ok() {
            merge.push(1, Vec::new(), Stamp::END).unwrap();
            let mut last = Stamp::ZERO;
            merge.drain(|s, _| {
                assert!(s >= last);
                last = s;
                Ok(())
            }).unwrap();
        }
    }

    #[test]
    fn checkpoints_of_random_bytes_are_refused(bytes in prop::collection::vec(any::<u8>(), 0..512)) {
        prop_assert!(Checkpoint::decode(&bytes).is_err());
    }

    #[test]
    fn any_corrupted_byte_of_a_checkpoint_is_detected(at in any::<prop::sample::Index>(), flip in 1u8..=255) {
        let mut bytes = checkpoint().encode().unwrap();
        let i = at.index(bytes.len());
        bytes[i] ^= flip;
        prop_assert!(Checkpoint::decode(&bytes).is_err());
    }
}

#[test]
fn a_valid_checkpoint_round_trips() {
    let original = checkpoint();
    assert_eq!(
        Checkpoint::decode(&original.encode().unwrap()).unwrap(),
        original
    );
}

#[test]
fn a_truncated_or_foreign_frame_is_refused_with_a_reason() {
    let mut frame = Vec::new();
    let mut body = Vec::new();
    write_tuple(&mut body, Stamp(1), b"payload");
    write_batch(&mut frame, &body, Stamp(1)).unwrap();
    frame.truncate(frame.len() - 3);
    let err = read_batch(&mut &frame[..]).unwrap_err().to_string();
    assert!(err.contains("reading data frame body"), "{err}");

    let mut hello = Vec::new();
    write_hello(
        &mut hello,
        ChannelHello {
            from: InstanceId(1),
            incarnation: Incarnation(0),
            to: InstanceId(2),
            connection: 0,
            to_incarnation: Incarnation(0),
        },
    )
    .unwrap();
    hello[4] = 99;
    let err = read_hello(&mut &hello[..]).unwrap_err().to_string();
    assert!(err.contains("protocol version"), "{err}");
}

#[test]
fn an_oversized_control_length_is_refused_before_allocating() {
    let mut bytes = (u32::MAX).to_le_bytes().to_vec();
    bytes.extend_from_slice(&[0; 16]);
    let err = control::recv::<ToWorker>(&mut &bytes[..])
        .unwrap_err()
        .to_string();
    assert!(err.contains("exceeds"), "{err}");
}

fn shipment() -> BackupShipment {
    BackupShipment {
        instance: InstanceId(4),
        incarnation: Incarnation(2),
        frontier: Stamp(9),
        bytes: checkpoint().encode().unwrap(),
    }
}

/// What a holder reads off a backup connection: the header, then the
/// bytes it announces.
fn receive_shipment(mut wire: &[u8]) -> Result<BackupShipment, String> {
    match control::recv::<ToHolder>(&mut wire).map_err(|e| e.to_string())? {
        Some(ToHolder::Store(header)) => {
            control::recv_shipment(&mut wire, header).map_err(|e| e.to_string())
        }
        other => panic!("not a shipment: {other:?}"),
    }
}

#[test]
fn a_shipped_checkpoint_arrives_whole_behind_its_header() {
    let sent = shipment();
    let mut wire = Vec::new();
    control::send_shipment(&mut wire, &sent).unwrap();
    let got = receive_shipment(&wire).unwrap();
    assert_eq!(
        (got.instance, got.incarnation, got.frontier),
        (sent.instance, sent.incarnation, sent.frontier)
    );
    assert_eq!(got.bytes, sent.bytes);
}

#[test]
fn a_shipment_cut_short_or_announcing_too_much_is_refused() {
    let mut wire = Vec::new();
    control::send_shipment(&mut wire, &shipment()).unwrap();
    wire.truncate(wire.len() - 5);
    let err = receive_shipment(&wire).unwrap_err();
    assert!(err.contains("after"), "{err}");

    let mut wire = control::encode(&ToHolder::Store(ShipmentHeader {
        instance: InstanceId(4),
        incarnation: Incarnation(2),
        frontier: Stamp(9),
        bytes: u64::MAX,
    }))
    .unwrap();
    wire.extend_from_slice(&[0; 16]);
    let err = receive_shipment(&wire).unwrap_err();
    assert!(err.contains("exceeds"), "{err}");
}
