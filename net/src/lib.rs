//! Network backends (tap) and their offloads. Empty until the virtio-net issue fills it.
