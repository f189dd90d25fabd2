-- Destination NAT on connection records (tracer/nat.py): an outbound record
-- whose destination a NAT rewrote (a Kubernetes ClusterIP or NodePort, a
-- published container port) names the backend it reached in remote_ip /
-- remote_port, and the virtual address its socket connected to here.
-- Records without NAT, and those of tracers older than these columns, hold
-- the defaults (:: and 0). Columns of the record contract (tracer/records.py).
ALTER TABLE $db.connections ADD COLUMN IF NOT EXISTS nat_ip IPv6 DEFAULT toIPv6('::');
ALTER TABLE $db.connections ADD COLUMN IF NOT EXISTS nat_port UInt16 DEFAULT 0;
