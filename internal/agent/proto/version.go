package proto

// EnvdVersion is the version of E2B's envd whose features ember-agent
// implements, as E2B's SDKs read it from a create or connect response to
// decide what they may ask for: 0.1.5 and 0.2.4 (guest metrics with the
// disk), 0.3.0 (stdin closed unless asked for), 0.4.0 (no user forced on
// every request), 0.5.2 (closing stdin). It stays below 0.5.7 while the
// agent takes no octet-stream uploads, and is raised only with the
// features the next gate names.
const EnvdVersion = "0.5.2"
