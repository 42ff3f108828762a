//! Migration through the transport (backend frames carry their virtio-net header): the driver programs the receive filter, VLANs,
//! MAC and guest offloads over the control queue; a second NIC restored from the JSON
//! state filters and delivers the next frames as the first would have, and resumes
//! each ring where the first stopped. Corrupted states are refused.

use super::*;
use crate::virtio::net::testutil::VQ_SIZE;
use crate::virtio::pci::testutil::PciDriver;

const NEW_MAC: [u8; 6] = [0x52, 0x54, 0x00, 0xab, 0xcd, 0xef];
const OTHER: [u8; 6] = [0x52, 0x54, 0x00, 0x00, 0x00, 0x09];
const MULTI: [u8; 6] = [0x01, 0x00, 0x5e, 0x00, 0x00, 0x01];

fn supported() -> Offloads {
    Offloads {
        csum: true,
        tso4: true,
        ..Offloads::NONE
    }
}

/// A control command through the transport; returns the ack byte.
fn ctrl_pci(
    d: &mut PciDriver,
    mem: &GuestMemoryMmap,
    cq: &mut Vq,
    at: u64,
    (class, cmd): (u8, u8),
    data: &[u8],
) -> u8 {
    let mut req = vec![class, cmd];
    req.extend_from_slice(data);
    mem.write_slice(&req, GuestAddress(at)).unwrap();
    mem.write_obj(0xeeu8, GuestAddress(at + 0x800)).unwrap();
    cq.add(&[
        (at, 2, false),
        (at + 2, data.len() as u32, false),
        (at + 0x800, 1, true),
    ]);
    d.kick(CTRL_QUEUE as u16);
    mem.read_obj(GuestAddress(at + 0x800)).unwrap()
}

#[test]
fn state_round_trips_through_the_transport() {
    let mem = memory();
    let (mut rx, tx, mut cq) = (
        Vq::new(&mem, 0),
        Vq::new(&mem, 0x1_0000),
        Vq::new(&mem, 0x2_0000),
    );
    let (dev, src_env) = device(supported());
    let mut src = PciDriver::new(Box::new(dev), &mem);
    let features = BASIC
        | VIRTIO_NET_F_CTRL_VLAN
        | VIRTIO_NET_F_CTRL_MAC_ADDR
        | VIRTIO_NET_F_CTRL_GUEST_OFFLOADS
        | VIRTIO_NET_F_CSUM
        | VIRTIO_NET_F_GUEST_CSUM
        | VIRTIO_NET_F_GUEST_TSO4;
    src.start(features, VQ_SIZE, &[&rx.mock, &tx.mock, &cq.mock]);

    let mut at = 0x50_0000;
    let mut cmd = |d: &mut PciDriver, c: (u8, u8), data: &[u8]| {
        at += 0x1000;
        ctrl_pci(d, &mem, &mut cq, at, c, data)
    };
    for (c, data) in [
        ((CTRL_RX, CTRL_RX_PROMISC), vec![0]),
        ((CTRL_RX, CTRL_RX_ALLMULTI), vec![1]),
        ((CTRL_MAC, CTRL_MAC_ADDR_SET), NEW_MAC.to_vec()),
        ((CTRL_MAC, CTRL_MAC_TABLE_SET), mac_table(&[], &[MULTI])),
        ((CTRL_VLAN, CTRL_VLAN_ADD), 5u16.to_le_bytes().to_vec()),
        (
            (CTRL_GUEST_OFFLOADS, CTRL_GUEST_OFFLOADS_SET),
            VIRTIO_NET_F_GUEST_CSUM.to_le_bytes().to_vec(),
        ),
    ] {
        assert_eq!(cmd(&mut src, c, &data), NET_OK, "{c:?}");
    }
    // One frame delivered on the source.
    rx.add(&[(0x60_0000, 2048, true)]);
    src_env
        .state
        .lock()
        .unwrap()
        .to_guest
        .push_back(with_hdr(&eth_frame(NEW_MAC, 60, 1)));
    src.dev.process_event(BACKEND_TOKEN);
    assert_eq!(rx.used(), [(0, (VNET_HDR_LEN + 60) as u32)]);

    let state = src.save();
    let VirtioDeviceState::Net(net) = &state.device else {
        panic!("{:?}", state.device)
    };
    assert_eq!(net.acked_features, features);
    assert_eq!(net.mac, NEW_MAC);
    assert!(!net.promisc && net.allmulti && net.link_up);
    assert_eq!(net.multicast, [MULTI]);
    assert_eq!(net.vlans[0], 1 << 5);
    assert_eq!(net.guest_offloads, VIRTIO_NET_F_GUEST_CSUM);
    assert_eq!(state.queues[RX_QUEUE].next_used, 1);
    assert_eq!(state.queues[CTRL_QUEUE].next_avail, 6);

    let (dev, dst_env) = device(supported());
    let mut dst = PciDriver::new(Box::new(dev), &mem);
    dst.dev.restore(&state).unwrap();
    assert_eq!(
        dst.registers(),
        src.registers(),
        "registers read back the same"
    );
    assert_eq!(dst.dev.state().unwrap(), state);
    {
        let b = dst_env.state.lock().unwrap();
        assert_eq!(b.hdr_len, VNET_HDR_LEN);
        assert_eq!(
            b.offloads.last(),
            Some(&Offloads {
                csum: true,
                ..Offloads::NONE
            }),
            "the driver's offloads, not all it acked"
        );
    }

    // Filtered as programmed: the old MAC and VLAN 6 are dropped, the new MAC passes.
    rx.add(&[(0x61_0000, 2048, true)]);
    let mut vlan6 = eth_frame(NEW_MAC, 64, 3);
    vlan6[12..16].copy_from_slice(&[0x81, 0x00, 0x00, 0x06]);
    dst_env.state.lock().unwrap().to_guest.extend([
        with_hdr(&eth_frame(MAC, 60, 2)),
        with_hdr(&eth_frame(OTHER, 60, 2)),
        with_hdr(&vlan6),
        with_hdr(&eth_frame(NEW_MAC, 70, 4)),
    ]);
    dst.dev.process_event(BACKEND_TOKEN);
    assert_eq!(
        rx.used(),
        [
            (0, (VNET_HDR_LEN + 60) as u32),
            (1, (VNET_HDR_LEN + 70) as u32)
        ]
    );
    assert_eq!(
        read(&mem, 0x61_0000 + VNET_HDR_LEN as u64, 70),
        eth_frame(NEW_MAC, 70, 4)
    );
    // The control queue carries on after the source's six commands.
    assert_eq!(
        ctrl_pci(
            &mut dst,
            &mem,
            &mut cq,
            0x70_0000,
            (CTRL_VLAN, CTRL_VLAN_DEL),
            &5u16.to_le_bytes()
        ),
        NET_OK
    );
    assert_eq!(cq.used().len(), 7);

    let refuse = |s: &crate::virtio::pci::VirtioPciState, why: &str| {
        PciDriver::new(Box::new(device(supported()).0), &mem).assert_refuses(s, why)
    };
    let with_net = |f: &dyn Fn(&mut NetState)| {
        let mut s = state.clone();
        if let VirtioDeviceState::Net(n) = &mut s.device {
            f(n);
        }
        s
    };
    refuse(
        &with_net(&|n| {
            n.vlans.pop();
        }),
        "VLAN table",
    );
    refuse(
        &with_net(&|n| n.guest_offloads |= VIRTIO_NET_F_GUEST_TSO6),
        "guest offloads",
    );
    refuse(
        &with_net(&|n| n.unicast = vec![OTHER; MAC_TABLE_ENTRIES]),
        "MAC table",
    );
    let mut bad = state.clone();
    bad.driver_features |= VIRTIO_NET_F_GUEST_UFO;
    refuse(&bad, "not offered");
    let mut bad = state.clone();
    bad.queues[TX_QUEUE].size = 512;
    refuse(&bad, "power of two up to 256");
    let mut bad = state.clone();
    bad.device = VirtioDeviceState::Block(crate::virtio::BlockState {
        acked_features: features,
    });
    refuse(&bad, "virtio-blk state for a virtio-net");
}
