package proto

// ReasonHeader names, on an error answer of the agent's /files and in the
// metadata of its Connect errors, what went wrong in one word the host maps
// to its sentinels: one Connect code or HTTP status covers several (a
// directory where a file is expected and the reverse are both invalid
// arguments). It is ember's addition to envd's protocol; E2B's SDKs ignore
// it.
const ReasonHeader = "Ember-Error"

// Reasons a file operation fails, as ReasonHeader carries them.
const (
	ReasonNotFound     = "not_found"
	ReasonIsDirectory  = "is_directory"
	ReasonNotDirectory = "not_directory"
	ReasonPermission   = "permission_denied"
	ReasonNoSpace      = "no_space"
	ReasonExists       = "exists"
	ReasonUnknownUser  = "unknown_user"
	ReasonInvalid      = "invalid"
	ReasonSignature    = "bad_signature"
)
