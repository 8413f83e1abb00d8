// Overlay: the virtual L2 network (per-VM IP/MAC, frames over libp2p, ARP proxy, announcements).
// Built in the overlay issue.
export {}
