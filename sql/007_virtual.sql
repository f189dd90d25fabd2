-- Virtual addresses of catalog services (tracer/catalog.py, "Virtual
-- addresses"): ranges and ports that stand for a service where the tracers
-- cannot see the translation (a cloud load balancer's VIP, a NodePort
-- reached from outside the cluster, another box's NAT), and the addresses
-- that translation presents to the service as the client. One row per
-- entry, written with the rest of a catalog version; position keeps the
-- entries' order in the file. Ranges in the form of catalog_services.cidrs
-- (IPv4 as IPv4-mapped IPv6).
CREATE TABLE IF NOT EXISTS $db.catalog_virtuals
(
    version     UInt64,
    service     String,
    position    UInt16,
    cidrs       Array(String),
    ports       Array(UInt16),
    sources     Array(String)
)
ENGINE = MergeTree
ORDER BY (version, service, position);
