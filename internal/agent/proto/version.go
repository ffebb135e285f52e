package proto

// EnvdVersion is the version of E2B's envd whose features ember-agent
// implements, as the control plane reports it to E2B's SDKs in create and
// connect responses; the SDKs gate features on it: guest metrics with the
// disk (0.1.5, 0.2.4), stdin closed unless asked for (0.3.0), no user forced
// on every request (0.4.0), closing stdin (0.5.2), octet-stream and gzip
// uploads (0.5.7), file metadata kept as user.e2b.* extended attributes
// (0.6.2), entries in watch events (0.6.3) and watches of network mounts
// (0.6.4, never refused here). It is raised only with the features the next
// gate names.
const EnvdVersion = "0.6.4"
