package client

import "github.com/emberhq/ember/wire"

// The request and response bodies of the REST API, defined in package wire
// (which the daemon serves them from) and named here so SDK users need one
// import.
type (
	CreateSandboxRequest  = wire.CreateSandboxRequest
	NetworkPolicy         = wire.NetworkPolicy
	Sandbox               = wire.Sandbox
	Snapshot              = wire.Snapshot
	CreateSnapshotRequest = wire.CreateSnapshotRequest
	ForkRequest           = wire.ForkRequest
	TimeoutRequest        = wire.TimeoutRequest
	ExecRequest           = wire.ExecRequest
	ExecResult            = wire.ExecResult
	ExecEvent             = wire.ExecEvent
	FileEntry             = wire.FileEntry
	MoveRequest           = wire.MoveRequest
	TerminalMessage       = wire.TerminalMessage
	Template              = wire.Template
	BuildEvent            = wire.BuildEvent
	BuildTemplateRequest  = wire.BuildTemplateRequest
	Info                  = wire.Info
	AccelInfo             = wire.AccelInfo
	Error                 = wire.Error
	WarmPool              = wire.WarmPool
	WarmRequest           = wire.WarmRequest
	KSM                   = wire.KSM

	// Hardening.
	CapacityInfo = wire.CapacityInfo
	Confinement  = wire.Confinement
	Limits       = wire.Limits
	Usage        = wire.Usage
)
