//! Images and the block graph: raw and qcow2 images over an io_uring engine, the node
//! graph, throttling, dirty bitmaps and the data movers of block jobs. Empty until the
//! virtio-blk issue fills it.
