// Transfer: live migration (pre-copy, post-copy) of memory pages and disk blocks over libp2p streams,
// and image propagation. Knows VMs only through the driver interface of src/vm. Built in the
// migration issue.
export {}
