-- An ember database at schema version 8, as that release wrote it.
PRAGMA user_version = 8;
CREATE TABLE sandboxes (
	id          TEXT PRIMARY KEY,
	template    TEXT NOT NULL,
	state       TEXT NOT NULL,
	vcpus       INTEGER NOT NULL,
	memory_mib  INTEGER NOT NULL,
	disk_mib    INTEGER NOT NULL,
	env         TEXT NOT NULL,
	metadata    TEXT NOT NULL,
	token       TEXT NOT NULL,
	slot_index  INTEGER NOT NULL,
	vmm_pid     INTEGER NOT NULL,
	dir         TEXT NOT NULL,
	disk_path   TEXT NOT NULL,
	disk_format TEXT NOT NULL,
	created_at  INTEGER NOT NULL,
	expires_at  INTEGER NOT NULL,
	error       TEXT NOT NULL,
	timings     TEXT NOT NULL
, network TEXT NOT NULL DEFAULT '{"internet":true}', timeout_s INTEGER NOT NULL DEFAULT 0, auto_pause INTEGER NOT NULL DEFAULT 0, snapshot TEXT NOT NULL DEFAULT '', auto_resume INTEGER NOT NULL DEFAULT 0, traffic_token TEXT NOT NULL DEFAULT '', limits TEXT NOT NULL DEFAULT '{}');
CREATE TABLE snapshots (
	name        TEXT PRIMARY KEY,
	sandbox     TEXT NOT NULL,
	template    TEXT NOT NULL,
	vcpus       INTEGER NOT NULL,
	memory_mib  INTEGER NOT NULL,
	disk_mib    INTEGER NOT NULL,
	dir         TEXT NOT NULL,
	token       TEXT NOT NULL,
	env         TEXT NOT NULL,
	hidden      INTEGER NOT NULL,
	created_at  INTEGER NOT NULL
);
INSERT INTO sandboxes (id, template, state, vcpus, memory_mib, disk_mib, env, metadata, token, slot_index, vmm_pid, dir, disk_path, disk_format, created_at, expires_at, error, timings, network, timeout_s, auto_pause, snapshot, auto_resume, traffic_token, limits) VALUES ('paused1','base','paused',2,512,2048,'{"A":"1"}','{}','tok-p',-1,0,'/var/lib/ember/sandboxes/paused1','/var/lib/ember/sandboxes/paused1/disk.raw','raw',1767323045000,1767326645000,'','null','{"internet":true}',3600,1,'snap1',1,'traffic-p','{}');
INSERT INTO sandboxes (id, template, state, vcpus, memory_mib, disk_mib, env, metadata, token, slot_index, vmm_pid, dir, disk_path, disk_format, created_at, expires_at, error, timings, network, timeout_s, auto_pause, snapshot, auto_resume, traffic_token, limits) VALUES ('running1','base','running',1,256,1024,'{}','{}','tok-r',7,4242,'/var/lib/ember/sandboxes/running1','/var/lib/ember/sandboxes/running1/disk.qcow2','qcow2',1767323045000,1767323345000,'','{"total":812.5}','{"internet":false,"allow":["10.0.0.0/8"]}',300,0,'',0,'','{}');
INSERT INTO snapshots (name, sandbox, template, vcpus, memory_mib, disk_mib, dir, token, env, hidden, created_at) VALUES ('snap1','src1','base',2,512,2048,'/var/lib/ember/snapshots/snap1','tok-p','{"K":"v"}',1,1767323045000);
