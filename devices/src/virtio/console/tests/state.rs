//! Migration through the transport: after the MULTIPORT handshake and a port opened by
//! the guest, a second bus restored from the JSON state carries on (output on the open
//! port, the control queue after the source's messages) without a new handshake.
//! Corrupted states are refused.

use super::*;
use crate::virtio::net::testutil::VQ_SIZE;
use crate::virtio::pci::testutil::PciDriver;
use crate::virtio::pci::VirtioPciState;

#[test]
fn state_round_trips_through_the_transport() {
    let mem = memory();
    let mut drv = Driver::new(&mem, queues());
    let (dev, _, _) = device();
    let mut src = PciDriver::new(Box::new(dev), &mem);
    let mocks: Vec<_> = drv.vqs.iter().map(|v| &v.mock).collect();
    src.start(MULTI, VQ_SIZE, &mocks);
    drv.handshake(src.dev.device_mut());
    drv.send_control(src.dev.device_mut(), 1, VIRTIO_CONSOLE_PORT_OPEN, 1);

    let state = src.save();
    let VirtioDeviceState::Console(c) = &state.device else {
        panic!("{:?}", state.device)
    };
    assert!(c.driver_ready);
    assert_eq!(c.acked_features, MULTI);
    let open: Vec<_> = c
        .ports
        .iter()
        .map(|p| (p.nr, p.guest_ready, p.guest_connected))
        .collect();
    assert_eq!(open, [(0, true, false), (1, true, true), (2, true, false)]);
    assert_eq!(state.queues[CONTROL_TX_QUEUE].next_used, 5);

    let (dev, sinks, events) = device();
    let mut dst = PciDriver::new(Box::new(dev), &mem);
    dst.dev.restore(&state).unwrap();
    assert_eq!(
        dst.registers(),
        src.registers(),
        "registers read back the same"
    );
    assert_eq!(dst.dev.state().unwrap(), state);
    assert!(events.take().is_empty(), "no VSERPORT_CHANGE on restore");

    // Port 1 is open on the destination: output reaches its backend.
    drv.write_port(dst.dev.device_mut(), 1, b"after migration");
    assert_eq!(sinks[1].take(), b"after migration");
    drv.send_control(dst.dev.device_mut(), 1, VIRTIO_CONSOLE_PORT_OPEN, 0);
    assert_eq!(events.take(), [(1, false)]);
    assert_eq!(drv.vqs[CONTROL_TX_QUEUE].used().len(), 6);

    let refuse = |s: &VirtioPciState, why: &str| {
        PciDriver::new(Box::new(device().0), &mem).assert_refuses(s, why)
    };
    let with = |f: &dyn Fn(&mut ConsoleState)| {
        let mut s = state.clone();
        if let VirtioDeviceState::Console(c) = &mut s.device {
            f(c);
        }
        s
    };
    refuse(
        &with(&|c| {
            c.ports.pop();
        }),
        "ports [0, 1]",
    );
    refuse(
        &with(&|c| c.control_out.push(vec![1, 2, 3])),
        "3-byte control",
    );
    let mut bad = state.clone();
    bad.driver_features |= VIRTIO_CONSOLE_F_SIZE;
    refuse(&bad, "not offered");
    let mut bad = state.clone();
    bad.queues[3].msix_vector = 200;
    refuse(&bad, "MSI-X vector 200");
}
