/*
 * phobos.c - per-edge TCP connection counters, aggregated in the kernel.
 *
 * What it traces: every TCP state change, through the raw tracepoint of
 * sock:inet_sock_set_state (IPv4 and IPv6, v4-mapped v6 folded into v4):
 *   CLOSE    -> LISTEN       a listener appears (process context)
 *   LISTEN   -> CLOSE        a listener goes away
 *   CLOSE    -> SYN_SENT     connect() (process context: pid/comm are right)
 *   SYN_SENT -> ESTABLISHED  the connect succeeded (softirq)
 *   SYN_RECV -> ESTABLISHED  an accepted connection (softirq)
 *   any      -> CLOSE        end of a connection; from SYN_SENT it is a
 *                            failed connect (refused, timed out, reset)
 *
 * How: the raw tracepoint passes (sk, oldstate, newstate) and nothing
 * else, so the transition is decided on the two states before the socket
 * is read at all; the 4-tuple, family and network namespace are read from
 * struct sock_common with byte offsets that userspace takes from the
 * running kernel's BTF and passes as -D flags (kernel headers may not
 * match the kernel), in one read of the leading bytes of the socket.  An
 * edge (netns, pid, direction, addresses, server port) gets a small id the
 * first time it is seen (edge_ids, ids from the edge_free stack), and its
 * counters are that id's slot in a per-CPU array.  A socket table (socks,
 * open addressing over an array, see sock_find) remembers the edge id of
 * each socket, so that transitions running in softirq (where "current" is
 * whatever task happened to be interrupted) are charged to the process
 * that connected or listened, and so that a followed socket's ESTABLISHED
 * and CLOSE need neither a read of the socket nor a hash lookup: two array
 * slots, which the verifier inlines.  The counters only grow while an id
 * lives; userspace reports the difference between two drains (exact
 * whatever runs meanwhile), retires an id whose counters stood still for a
 * few drains and that no socket entry holds (counters.held), and pushes it
 * back onto edge_free a drain after unmapping its key, when no program can
 * still be using it.  Nothing is sent to userspace per event: no perf
 * buffer, no ring buffer.
 *
 * Which sockets hold a socks entry: a connecting socket from CLOSE->SYN_SENT
 * and an accepted one from SYN_RECV->ESTABLISHED (the handshake completed,
 * even if the server has not called accept() yet) until the socket reaches
 * CLOSE - through ESTABLISHED, FIN_WAIT1/2, CLOSE_WAIT, LAST_ACK, CLOSING.
 * Listeners, request sockets (SYN_RECV) and TIME_WAIT do not: the kernel
 * replaces a closing socket by a timewait mini-socket and moves the full
 * socket to CLOSE, which the tracepoint sees.  Both ends of a loopback
 * connection hold one entry each.
 *
 * Why a table that refuses rather than an LRU: an LRU evicts the oldest
 * socket silently when it is full, and that socket's close is then lost
 * (its edge's open gauge stays one too high, with no trace of why).  The
 * socket table refuses a new socket whose two buckets are full instead
 * (with two choices that happens only when nearly every entry of the table
 * is taken); the refusal is counted exactly in
 * drops[DROP_SOCKS], the refused socket adds nothing to the open gauge, and
 * userspace reconciles: after an interval with drops it reads the kernel's
 * socket list and enters the open connections the map refused into the
 * "seeded" map (keyed by 4-tuple), whose close is counted like that of a
 * connection that predates the tracer.  Entries cannot leak: every TCP
 * socket that passes CLOSE->SYN_SENT or SYN_RECV->ESTABLISHED later passes
 * ->CLOSE (tcp_set_state, tcp_done, tcp_disconnect all go through
 * inet_sk_state_store, which fires the tracepoint) - unless the kernel
 * skipped this program because it was already running on the CPU (a state
 * change in a softirq that interrupted it; counted by the kernel as the
 * program's recursion_misses, which userspace reports).  A raw tracepoint
 * is only skipped for recursion of this program itself, where a classic
 * tracepoint program is skipped whenever any kprobe or tracepoint program
 * runs on the CPU.  An entry whose close was missed is found when the
 * kernel reuses the socket's address for a new connection (follow() looks
 * for the address before it claims a way); the stale entry's open count
 * and its hold on its edge id are then taken back
 * (stats[STAT_MISSED_CLOSES]).  Until then (the slab normally hands a
 * freed socket's memory to the next socket allocated on that CPU) it holds
 * an entry, its edge id and one open connection too many.
 *
 * Health of an edge, from the same state changes: at SYN_SENT the socket's
 * entry takes a ktime stamp, at ESTABLISHED the handshake's latency goes
 * into the edge's sum, count and log2 histogram (HS_BUCKETS); at the close
 * of an established connection its payload bytes each way and its
 * retransmitted segments are read from the socket (see add_totals), and a
 * close straight from ESTABLISHED or CLOSE_WAIT (no FIN exchange: a reset
 * or a timeout) counts as an abort.
 *
 * Cost: per connection (both ends on the host, six state changes of which
 * five are acted on) two socket reads at each of connect and accept, one at
 * ESTABLISHED, four to six fields of the socket at each close; a lookup of
 * the edge's id at connect and at accept, which is a comparison with the
 * edge this CPU counted last (a hash lookup of the id, and at accept one of
 * the listener, when it is another or a listener changed since); otherwise
 * array slots: the socket table's two buckets (one cache line of owner
 * words each) at every state change, a compare-and-swap to claim an entry
 * and an exchange to give it back, and the edge's per-CPU counters, written
 * with plain adds; nothing per packet, and nothing but two comparisons for
 * the state changes not listed above.  An edge seen for the first time also
 * pops an id and writes its task name (read only then).  Helper calls are
 * what costs most where the kernel guards each return (here about 35 ns a
 * call, against a few ns for an array lookup, which the verifier inlines,
 * as recent kernels do for per-CPU arrays too): on this kernel a connection
 * makes two, the current pid and the clock at connect.  Everything else is
 * loaded directly - tcp_sock's fields through a cast the verifier inlines
 * (TCP_SOCK), the handshake's end from the clock the kernel read for the
 * SYN-ACK, connection durations in jiffies (a load; userspace converts them
 * with the tick length) - and the listener's entry is only read when the
 * accept's edge is not the one this CPU remembers or a listener changed
 * since.  Measured here with kernel.bpf_stats_enabled on the loopback
 * connect/accept/close loop of tests/bench/bench_tracer.py, alternating
 * with the first design of this program (a hash of sockets keyed by address
 * with two inserts, two deletes and three lookups per connection, per-CPU
 * hashes of edges in two generations, five lookups of a 48-byte key and
 * about eight helper calls per connection): a third of its time per state
 * change, and net of what an empty program costs on the same hook (the
 * accounting's own clock reads, 70-90 ns here), a fifth.  Socket-local
 * storage (BPF_MAP_TYPE_SK_STORAGE) for the socket's entry was measured
 * slower than that hash: its per-socket allocation costs more than
 * preallocated entries.  Needs BPF atomics (compare-and-swap, exchange):
 * Linux 5.12 or later.
 *
 * Caveats: accepted connections are charged to the process that called
 * listen() on (netns, port); a listener shared by forked workers is charged
 * to the one that listened (kprobe/fentry mode refreshes the listener from
 * inet_csk_accept, see PHOBOS_CALL_PROBES).  A socket refused by a full
 * socket table has its connect or accept counted but not its failure, close or
 * duration unless a reconciliation seeded it while it was open.
 * Connections that were open before the tracer started (or that the socks
 * map refused) are matched by 4-tuple against the "seeded" map that
 * userspace fills from /proc, so their close is counted once and never as a
 * new connect.  Durations have the resolution of one tick per connection
 * (their sum is unbiased).  Bytes and retransmits are counted when a
 * connection closes, in the interval of its close: a connection open for
 * hours reports nothing of its traffic until then, and one that predates
 * the tracer (seeded) or that the socket table refused reports none of it.
 * stats[STAT_EVENTS] counts the state changes acted on, not every TCP state
 * change.
 *
 * The #defines below (DIR_*, CFG_*, DROP_*, STAT_*, MAX_*, SOCK_*, P_TCP_*) are read
 * by tracer/probe.py from this file, so each value has one source.
 */

#if !defined(SKC_NET_OFF) || !defined(NET_NS_INUM_OFF) || !defined(SK_PROTOCOL_OFF) || \
    !defined(SKC_ADDRS_OFF) || !defined(SKC_V6_DADDR_OFF) || !defined(SKC_V6_RCV_SADDR_OFF) || \
    !defined(SKC_DPORT_OFF) || !defined(SKC_NUM_OFF) || !defined(SKC_FAMILY_OFF) || \
    !defined(INET_SPORT_OFF) || !defined(SKC_HEAD_LEN) || !defined(TCP_BYTES_ACKED_OFF) || \
    !defined(TCP_SND_UNA_OFF) || !defined(TCP_WRITE_SEQ_OFF) || !defined(TCP_BYTES_RECEIVED_OFF) || \
    !defined(TCP_TOTAL_RETRANS_OFF) || !defined(SK_FLAGS_OFF) || !defined(SOCK_DONE_BIT) || \
    !defined(TCP_CLOCK_CACHE_OFF)
#error "struct offsets (SKC_*_OFF, SK_*_OFF, INET_SPORT_OFF, NET_NS_INUM_OFF, SKC_HEAD_LEN, TCP_*_OFF, SOCK_DONE_BIT) must be passed from BTF"
#endif
#ifndef MAX_EDGES
#define MAX_EDGES 16384
#endif
#ifndef MAX_SOCKS
#define MAX_SOCKS 65536
#endif
/* The socket table: SOCK_BUCKETS (2^SOCK_BUCKET_BITS) buckets of SOCK_WAYS
 * entries; userspace sizes it to MAX_SOCKS rounded up to a power of two. */
#define SOCK_WAYS 8
#ifndef SOCK_BUCKET_BITS
#define SOCK_BUCKET_BITS 13
#endif
#define SOCK_BUCKETS (1 << SOCK_BUCKET_BITS)
#ifndef MAX_LISTENERS
#define MAX_LISTENERS 4096
#endif
#ifndef MAX_SEEDED
#define MAX_SEEDED 65536
#endif
#ifndef MAX_ORPHANS
#define MAX_ORPHANS 16384
#endif

/* Kernel ABI constants, spelled out so no kernel header is needed. */
#define P_AF_INET 2
#define P_AF_INET6 10
#define P_IPPROTO_TCP 6
#define P_TCP_ESTABLISHED 1
#define P_TCP_SYN_SENT 2
#define P_TCP_SYN_RECV 3
#define P_TCP_FIN_WAIT1 4
#define P_TCP_FIN_WAIT2 5
#define P_TCP_CLOSE 7
#define P_TCP_CLOSE_WAIT 8
#define P_TCP_LAST_ACK 9
#define P_TCP_LISTEN 10
#define P_TCP_CLOSING 11
#define P_EEXIST 17

#define DIR_OUTBOUND 1
#define DIR_INBOUND 2

/* config[] slots, written by userspace */
#define CFG_SEEDING 0  /* 1 while userspace reads /proc (start-up, reconciliation) */
#define CFG_EPOCH 1    /* bumped by userspace before it retires edge ids: edge_cache entries of an older epoch are void */
#define CFG_LISTEN_EPOCH 2  /* bumped by this program when a listener changes (see edge_id_accepted) */
#define CFG_SLOTS 3

/* drops[] slots: failed map updates, per CPU */
#define DROP_EDGES 0
#define DROP_SOCKS 1
#define DROP_LISTENERS 2
#define DROP_ORPHANS 3
#define DROP_SLOTS 4

/* stats[] slots, per CPU */
#define STAT_EVENTS 0
#define STAT_ACCEPT_NO_LISTENER 1
#define STAT_MISSED_CLOSES 2   /* stale socket entries found at address reuse */
#define STAT_EDGES_CREATED 3   /* edge ids handed out: userspace reads edge_ids when it moves */
#define STAT_HANDSHAKE_CLOCK_READS 4  /* handshakes whose end the kernel's clock reading could not give */
#define STAT_SLOTS 5

/*
 * Handshake latency histogram of an edge (tracer/records.py reads the same
 * layout): bucket 0 is below 2^HS_MIN_LOG2 us; above, each power of two is
 * split in two halves, [2^n, 1.5*2^n) and [1.5*2^n, 2^(n+1)), so a bucket
 * is at most 1.5 times as wide as its lower bound and a percentile read
 * from it is within about 20 % of the truth.  The last bucket holds
 * everything from 2^(HS_MIN_LOG2 + (HS_BUCKETS - 2) / 2) us (4.2 s) up.
 */
#define HS_BUCKETS 32
#define HS_MIN_LOG2 7
/* Longer than any handshake (Linux gives up on a connect after about 130 s
 * of SYN retries by default): a clock reading this far after the SYN's
 * stamp is not the handshake's end (see on_connected). */
#define HS_MAX_NS (1ULL << 39)

struct edge_key {
    u32 netns;
    u32 pid;
    u8 laddr[16];
    u8 raddr[16];
    u16 lport;      /* 0 for a client's ephemeral port */
    u16 rport;      /* 0 for a server's peer ephemeral port */
    u8 direction;
    u8 pad[3];
};
/* edge_cache_holds compares keys as six words. */
_Static_assert(sizeof(struct edge_key) == 48, "struct edge_key is 48 bytes");

/* An edge's counters: cumulative for as long as its id lives, one copy per
 * CPU; userspace reports the differences between two drains. */
struct edge_val {
    u64 connects;
    u64 accepts;
    u64 closes;
    u64 failures;
    s64 open_delta;     /* +1 established, -1 closed: the sum is the open gauge */
    u64 duration_jiffies_sum;   /* ticks: userspace knows their length */
    u64 bytes_sent;     /* payload sent, each byte once, at close */
    u64 bytes_received; /* payload received in order, at close */
    u64 retransmits;    /* tcp_sock.total_retrans at close (see add_totals) */
    u64 aborts;         /* established connections closed without the FIN exchange */
    u64 handshakes;     /* connects that reached ESTABLISHED ... */
    u64 handshake_ns_sum;   /* ... and the time they took from SYN_SENT */
    s64 held;           /* +1 a socket entry took the id, -1 it let go */
    u32 handshake_hist[HS_BUCKETS];
};

/* The task name of an edge, taken when its id is handed out: short-lived
 * clients are gone by the time userspace first reads the edge. */
struct edge_comm {
    char comm[16];
};

struct sock_state {
    u32 edge;           /* edge id: index of edges[] and edge_comms[] */
    u32 established;
    u64 start_ns;       /* jiffies (the name is the map's ABI with userspace) */
    u64 syn_ns;         /* ktime at SYN_SENT, for the handshake's latency */
    u16 sport;          /* actual ports, to match the /proc snapshot */
    u16 dport;
    u8 outbound;        /* a connect's entry (else an accepted connection's) */
    u8 pad[3];
};

/* One bucket of the socket table: the owners' socket pointers (0: free) in
 * one cache line, their entries after it. */
struct sock_bucket {
    u64 sk[SOCK_WAYS];
    struct sock_state st[SOCK_WAYS];
};

struct listen_key {
    u32 netns;
    u16 port;
    u16 pad;
};

struct listen_val {
    u32 pid;
    u32 count;          /* sockets listening on (netns, port) */
    u8 addr[16];
    char comm[16];
};

/* A connection that predates the tracer, found in /proc by userspace. */
struct tuple_key {
    u32 netns;
    u16 lport;
    u16 rport;
    u8 laddr[16];
    u8 raddr[16];
};

/*
 * What the classic tracepoint would have copied out of the socket, read
 * only for the transitions that need more than the socket's address.
 */
struct tp_state {
    const void *skaddr;
    int oldstate;
    int newstate;
    u16 sport;
    u16 dport;
    u16 family;
    u8 saddr[4];
    u8 daddr[4];
    u8 saddr_v6[16];
    u8 daddr_v6[16];
};

struct seed_val {
    struct edge_key edge;
    char comm[16];
};

/* An edge key's id, handed out from edge_free (ids 1..MAX_EDGES-1 pushed by
 * userspace, which pushes an id back once it has retired the edge). */
BPF_HASH(edge_ids, struct edge_key, u32, MAX_EDGES);
BPF_STACK(edge_free, u32, MAX_EDGES);
/* Per CPU: a connection's state changes run on whichever CPU the process
 * or the softirq is on, and shared counters made their cache lines bounce
 * between CPUs under atomic adds (about 9 % of the program's time per state
 * change here); userspace sums the copies at each drain.  Id 0 collects
 * what no id could be handed out for (drops[DROP_EDGES]); nobody reads it. */
BPF_PERCPU_ARRAY(edges, struct edge_val, MAX_EDGES);
BPF_ARRAY(edge_comms, struct edge_comm, MAX_EDGES);
/* Per CPU, the last edge a connect (slot 0) and an accept (slot 1) counted
 * to: a process that connects again and again to the same server, or a
 * server accepting again and again from the same client, needs no lookup
 * of edge_ids, nor an accept one of listeners (see edge_id_connected and
 * edge_id_accepted). */
struct edge_cache_entry {
    struct edge_key key;
    u32 id;
    u32 epoch;
    u32 listen_epoch;   /* accepts: config[CFG_LISTEN_EPOCH] when the listener was read */
    u32 no_listener;    /* accepts: there was none (counted again at each hit) */
};
BPF_PERCPU_ARRAY(edge_cache, struct edge_cache_entry, 2);
/* Open addressing over an array, whose lookups the verifier inlines: a
 * socket lives in one of two buckets (see sock_find); a full pair refuses
 * (counted) instead of evicting. */
BPF_ARRAY(socks, struct sock_bucket, SOCK_BUCKETS);
BPF_HASH(listeners, struct listen_key, struct listen_val, MAX_LISTENERS);
BPF_HASH(seeded, struct tuple_key, struct seed_val, MAX_SEEDED);
/* 4-tuples closed while userspace reads /proc; it clears the map after. */
BPF_HASH(orphans, struct tuple_key, u32, MAX_ORPHANS);
BPF_ARRAY(config, u32, CFG_SLOTS);
BPF_PERCPU_ARRAY(drops, u64, DROP_SLOTS);
BPF_PERCPU_ARRAY(stats, u64, STAT_SLOTS);

#ifdef PHOBOS_CALL_PROBES
/* A tcp_v4_connect/tcp_v6_connect call in progress, by thread (see below). */
struct connect_call {
    const void *sk;
    const void *uaddr;
    u32 syn_sent;       /* the tracepoint saw this call reach SYN_SENT */
    char comm[16];
};
BPF_HASH(connect_calls, u64, struct connect_call, 1024);
#endif

/*
 * A struct tcp_sock pointer to the BTF-typed program's socket: the verifier
 * lets it load tcp_sock's fields, which lie beyond struct sock (the
 * tracepoint's argument type).  BCC cannot call a kfunc, so this is
 * compiled as a call to a helper that does not exist, TCP_SOCK_CAST_CALL,
 * which userspace links before loading (probe.link_tcp_sock_casts): to the
 * kfunc bpf_rdonly_cast (Linux 6.2+), which the verifier turns into a
 * register move, or else to the helper bpf_skc_to_tcp_sock, a call (about
 * 35 ns here, a third of what this program costs per state change).  The
 * helper ignores the second argument and returns NULL for what is not a
 * TCP socket; the cast returns its argument.
 */
#define TCP_SOCK_CAST_CALL 0x7ffe
#ifndef TCP_SOCK_BTF_ID
#define TCP_SOCK_BTF_ID 0
#endif
static void *(*tcp_sock_cast)(const void *sk, u32 btf_id) = (void *)TCP_SOCK_CAST_CALL;
#define TCP_SOCK(sk) tcp_sock_cast((sk), TCP_SOCK_BTF_ID)

/* The socket as a struct tcp_sock for SK_FIELD: the cast where loads are
 * direct, the socket's address itself where they go through the helper. */
static __always_inline const void *tcp_sock_of(const void *sk, int direct)
{
    return direct ? TCP_SOCK(sk) : sk;
}

/* An edge's values are this CPU's copy (per-CPU maps): a plain add, no
 * atomic, and no cache line shared with the other CPUs' updates. */
#define EV_ADD(p, v) (*(p) += (v))

static __always_inline void count(int is_drop, u32 slot)
{
    u64 *v = is_drop ? drops.lookup(&slot) : stats.lookup(&slot);
    if (v)
        (*v)++;   /* per-CPU slot: no atomic needed */
}

static __always_inline u32 cfg(u32 slot)
{
    u32 *v = config.lookup(&slot);
    return v ? *v : 0;
}

/*
 * A field of the socket (or of its struct net).  The BTF-typed raw
 * tracepoint (phobos_state_btf) may load kernel memory directly - the
 * verifier checks each load against the kernel's BTF and the JIT guards it
 * - while the plain raw tracepoint (phobos_state_raw) has to go through the
 * probe-read helper, a call per read.  "direct" is a constant in each entry
 * point, so each gets only its own code.
 */
#define SK_FIELD(type, base, off, direct) ({                                   \
    type _v = 0;                                                               \
    if (direct)                                                                \
        _v = *(const type *)((const char *)(base) + (off));                    \
    else                                                                       \
        bpf_probe_read_kernel(&_v, sizeof(_v), (const char *)(base) + (off));  \
    _v; })

static __always_inline int is_v4_mapped(const u8 *a)
{
    return a[0] == 0 && a[1] == 0 && a[2] == 0 && a[3] == 0 && a[4] == 0 &&
           a[5] == 0 && a[6] == 0 && a[7] == 0 && a[8] == 0 && a[9] == 0 &&
           a[10] == 0xff && a[11] == 0xff;
}

/*
 * Addresses as 16 bytes, IPv4 as ::ffff:a.b.c.d.  A v6 socket talking to a
 * v4 peer has a mapped daddr_v6, but during connect() its saddr_v6 is only
 * filled after tcp_v4_connect returns, so use the v4 fields for both.
 */
static __always_inline void tp_addrs(const struct tp_state *args,
                                     u8 *laddr, u8 *raddr)
{
    u8 d6[16] = {};
    int v4 = args->family == P_AF_INET;
    if (!v4) {
        __builtin_memcpy(d6, args->daddr_v6, 16);
        v4 = is_v4_mapped(d6);
    }
    if (v4) {
        __builtin_memset(laddr, 0, 16);
        __builtin_memset(raddr, 0, 16);
        laddr[10] = laddr[11] = raddr[10] = raddr[11] = 0xff;
        __builtin_memcpy(laddr + 12, args->saddr, 4);
        __builtin_memcpy(raddr + 12, args->daddr, 4);
    } else {
        __builtin_memcpy(laddr, args->saddr_v6, 16);
        __builtin_memcpy(raddr, d6, 16);
    }
}

/*
 * The id of an edge, handed out when the edge is first seen.  The task name
 * is only wanted then (userspace keeps it per edge), so it is read only
 * then: in process context from the current task (COMM_CURRENT), else
 * copied from a listener or seeded entry, else left empty.  Two CPUs may
 * create the same edge at once: the insert refuses the second, which gives
 * its id back and takes the first's.  Id 0 when none is left (counted).
 */
#define COMM_NONE 0
#define COMM_CURRENT 1
#define COMM_COPY 2
static __always_inline u32 edge_id(struct edge_key *k, int how, const char *comm)
{
    u32 *known = edge_ids.lookup(k);
    if (known)
        return *known;
    u32 id = 0;
    if (edge_free.pop(&id) != 0 || id == 0 || id >= MAX_EDGES) {
        count(1, DROP_EDGES);
        return 0;
    }
    struct edge_comm *c = edge_comms.lookup(&id);
    if (c) {
        if (how == COMM_CURRENT)
            bpf_get_current_comm(c->comm, sizeof(c->comm));
        else if (how == COMM_COPY)
            __builtin_memcpy(c->comm, comm, sizeof(c->comm));
        else
            __builtin_memset(c->comm, 0, sizeof(c->comm));
    }
    if (edge_ids.insert(k, &id) == 0) {
        count(0, STAT_EDGES_CREATED);
        return id;
    }
    edge_free.push(&id, 0);
    known = edge_ids.lookup(k);
    if (known)
        return *known;
    count(1, DROP_EDGES);
    return 0;
}

/*
 * edge_id, remembered per CPU for the next connect or accept of the same
 * edge (the key compared word by word: its padding is always zero).  An
 * entry is only good in the epoch it was made in: userspace bumps
 * config[CFG_EPOCH] before it unmaps the keys of edges it retires, and
 * gives their ids back a drain later, so a remembered id is never one that
 * has gone to another edge.  A program that read the old epoch just before
 * the bump uses the id as one that looked it up in edge_ids just before the
 * unmapping would: the drain after that still reads it.
 */
static __always_inline struct edge_cache_entry *edge_cache_entry(u32 slot)
{
    return edge_cache.lookup(&slot);
}

/* Whether e holds k in this epoch; of the key's first word (netns and pid)
 * only the bits of word0_mask are compared. */
static __always_inline int edge_cache_holds(const struct edge_cache_entry *e, const struct edge_key *k,
                                            u64 word0_mask, u32 epoch)
{
    const u64 *a = (const u64 *)&e->key, *b = (const u64 *)k;
    return e->id && e->epoch == epoch && ((a[0] ^ b[0]) & word0_mask) == 0 && a[1] == b[1] &&
           a[2] == b[2] && a[3] == b[3] && a[4] == b[4] && a[5] == b[5];
}

static __always_inline void edge_cache_keep(struct edge_cache_entry *e, const struct edge_key *k, u32 id,
                                            u32 epoch)
{
    __builtin_memcpy(&e->key, k, sizeof(*k));
    e->id = id;
    e->epoch = epoch;
}

/* The edge of a connect by the current process. */
static __always_inline u32 edge_id_connected(struct edge_key *k)
{
    struct edge_cache_entry *e = edge_cache_entry(0);
    u32 epoch = cfg(CFG_EPOCH);
    if (e && edge_cache_holds(e, k, ~0ULL, epoch))
        return e->id;
    u32 id = edge_id(k, COMM_CURRENT, 0);
    if (e)
        edge_cache_keep(e, k, id, epoch);
    return id;
}

/*
 * The edge of an accepted connection, charged to the process that listens
 * on (netns, port); k->pid is only filled when the listener is looked up.
 * It is looked up (a hash lookup) when the CPU's last accept was of another
 * edge, or when a listener changed since on the host: on_listen (when the
 * pid changes or the listener is new), on_unlisten (when the last socket
 * goes) and refresh_listener bump config[CFG_LISTEN_EPOCH] after the change, and
 * the epoch is read here before the listener, so an entry made from a
 * listener read before a change has an older epoch (on x86, which keeps
 * loads and stores in order; where the CPU may reorder them, an accept
 * racing another process's listen() on the same port may keep the old
 * listener until this CPU's next accept of another edge or the next
 * change).  Userspace, which adds listeners found in /proc, bumps
 * config[CFG_EPOCH] after.
 */
static __always_inline u32 edge_id_accepted(struct edge_key *k)
{
    const struct edge_key netns_bits = {.netns = 0xFFFFFFFF};
    struct edge_cache_entry *e = edge_cache_entry(1);
    u32 epoch = cfg(CFG_EPOCH);
    u32 listen_epoch = cfg(CFG_LISTEN_EPOCH);
    if (e && e->listen_epoch == listen_epoch && edge_cache_holds(e, k, *(const u64 *)&netns_bits, epoch)) {
        if (e->no_listener)
            count(0, STAT_ACCEPT_NO_LISTENER);
        return e->id;
    }
    char comm[16] = {};
    struct listen_key lk = {.netns = k->netns, .port = k->lport};
    struct listen_val *lv = listeners.lookup(&lk);
    if (lv) {
        k->pid = lv->pid;
        __builtin_memcpy(comm, lv->comm, sizeof(comm));
    } else {
        k->pid = 0;
        count(0, STAT_ACCEPT_NO_LISTENER);
    }
    u32 id = edge_id(k, COMM_COPY, comm);
    if (e) {
        edge_cache_keep(e, k, id, epoch);
        e->listen_epoch = listen_epoch;
        e->no_listener = !lv;
    }
    return id;
}

/* After a listener's entry changed: accepts look it up again. */
static __always_inline void listeners_changed(void)
{
    u32 slot = CFG_LISTEN_EPOCH;
    u32 *v = config.lookup(&slot);
    if (v)
        __sync_fetch_and_add(v, 1);
}

/* This CPU's counters of an edge id (an array slot: never missing for an
 * id below MAX_EDGES, the verifier just wants the check). */
static __always_inline struct edge_val *edge_vals(u32 id)
{
    return edges.lookup(&id);
}

static __always_inline void on_listen(const struct tp_state *args, u32 netns)
{
    struct listen_key lk = {.netns = netns, .port = args->sport};
    struct listen_val *lv = listeners.lookup(&lk);
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (lv) {
        __sync_fetch_and_add(&lv->count, 1);
        int changed = lv->pid != pid;
        lv->pid = pid;
        bpf_get_current_comm(lv->comm, sizeof(lv->comm));
        if (changed)
            listeners_changed();
        return;
    }
    struct listen_val nv = {.pid = pid, .count = 1};
    u8 raddr[16];
    tp_addrs(args, nv.addr, raddr);
    bpf_get_current_comm(nv.comm, sizeof(nv.comm));
    if (listeners.insert(&lk, &nv) != 0 && !listeners.lookup(&lk))
        count(1, DROP_LISTENERS);
    listeners_changed();
}

static __always_inline void on_unlisten(const struct tp_state *args, u32 netns)
{
    struct listen_key lk = {.netns = netns, .port = args->sport};
    struct listen_val *lv = listeners.lookup(&lk);
    if (!lv)
        return;
    /* The LLVM BPF target here cannot use the value XADD returns. */
    if (lv->count <= 1) {
        listeners.delete(&lk);
        listeners_changed();
    } else {
        __sync_fetch_and_add(&lv->count, -1);
    }
}

/*
 * The socket table.  A socket's entry lives in one of two buckets picked by
 * two multiplicative hashes of its address (two choices keep the fullest
 * bucket of a table loaded to half near the average, where one choice
 * would overflow a few buckets early); within a bucket, in the way whose
 * owner word holds the socket's address.  A way is claimed with a
 * compare-and-swap on its owner word (two sockets may hash to the same
 * bucket on two CPUs at once) and given back with an exchange, after the
 * entry has been read.  All other access to an entry is by the socket's own
 * state changes, which the kernel runs under the socket's lock, so they
 * need no atomics.
 */
#define SOCK_HASH1 0x9E3779B97F4A7C15ULL
#define SOCK_HASH2 0xC2B2AE3D27D4EB4FULL
struct sock_ref {
    u64 *owner;
    struct sock_state *st;
};

static __always_inline u32 sock_bucket_of(u64 skp, u64 mult)
{
    return (u32)((skp * mult) >> (64 - SOCK_BUCKET_BITS));
}

/* The way of the socket's two buckets whose owner word is ``owner``: the
 * socket's own (owner = skp), or a free one (owner = 0), claimed for it. */
static __always_inline int sock_way(u64 skp, u64 owner, struct sock_ref *ref)
{
    u32 idx[2] = {sock_bucket_of(skp, SOCK_HASH1), sock_bucket_of(skp, SOCK_HASH2)};
#pragma unroll
    for (int j = 0; j < 2; j++) {
        struct sock_bucket *b = socks.lookup(&idx[j]);
        if (!b)
            continue;
#pragma unroll
        for (int i = 0; i < SOCK_WAYS; i++) {
            if (b->sk[i] == owner && (owner || __sync_val_compare_and_swap(&b->sk[i], 0, skp) == 0)) {
                ref->owner = &b->sk[i];
                ref->st = &b->st[i];
                return 1;
            }
        }
    }
    return 0;
}

static __always_inline int sock_find(u64 skp, struct sock_ref *ref)
{
    return sock_way(skp, skp, ref);
}

static __always_inline int sock_claim(u64 skp, struct sock_ref *ref)
{
    return sock_way(skp, 0, ref);
}

/* Give a way back, after everything wanted of its entry has been read: the
 * exchange orders those reads before the next owner's writes. */
static __always_inline void sock_release(struct sock_ref *ref)
{
    __sync_lock_test_and_set(ref->owner, 0);
}

/*
 * Follow a socket that is only now connecting or being accepted.  An entry
 * already there belongs to an earlier socket at the same address whose
 * close this program never saw (every seen close frees the entry): what
 * that socket added to its edge's open gauge is taken back, its id let go,
 * and the entry reused.  Returns 1 when the socket is followed.
 */
static __always_inline int follow(u64 skp, const struct sock_state *st, struct edge_val *ev)
{
    struct sock_ref ref;
    if (sock_find(skp, &ref)) {
        count(0, STAT_MISSED_CLOSES);
        struct edge_val *old = edge_vals(ref.st->edge);
        if (old) {
            if (ref.st->established)
                EV_ADD(&old->open_delta, -1);
            EV_ADD(&old->held, -1);
        }
    } else if (!sock_claim(skp, &ref)) {
        count(1, DROP_SOCKS);
        return 0;
    }
    *ref.st = *st;
    if (ev)
        EV_ADD(&ev->held, 1);
    return 1;
}

static __always_inline void on_connect(const struct tp_state *args,
                                       u64 skp, u32 netns)
{
    struct edge_key k = {};
    k.netns = netns;
    k.pid = bpf_get_current_pid_tgid() >> 32;
    k.direction = DIR_OUTBOUND;
    k.rport = args->dport;
    tp_addrs(args, k.laddr, k.raddr);
    struct sock_state st = {};
    st.edge = edge_id_connected(&k);
    st.dport = args->dport;
    st.outbound = 1;
    st.syn_ns = bpf_ktime_get_ns();
    struct edge_val *ev = edge_vals(st.edge);
    if (ev)
        EV_ADD(&ev->connects, 1);
#ifdef PHOBOS_CALL_PROBES
    /* CLOSE->SYN_SENT runs inside the connect call: the return probe must
     * not count this connect again if the call fails after this point,
     * whether or not the socket got an entry below. */
    u64 tid = bpf_get_current_pid_tgid();
    struct connect_call *call = connect_calls.lookup(&tid);
    if (call)
        call->syn_sent = 1;
#endif
    /* Full table: the connect is counted, the socket is not followed.  Its
     * ESTABLISHED then finds no entry and adds nothing to the open gauge. */
    follow(skp, &st, ev);
}

/* floor(log2(v)) for v > 0, without a loop (the verifier needs none). */
static __always_inline u32 log2_u32(u32 v)
{
    u32 r = (v > 0xFFFF) << 4, shift;
    v >>= r;
    shift = (v > 0xFF) << 3;
    v >>= shift;
    r |= shift;
    shift = (v > 0xF) << 2;
    v >>= shift;
    r |= shift;
    shift = (v > 0x3) << 1;
    v >>= shift;
    r |= shift;
    return r | (v >> 1);
}

/* The handshake histogram's bucket of a latency (layout at HS_BUCKETS). */
static __always_inline u32 hs_bucket(u64 ns)
{
    u64 us = ns / 1000;
    if (us < (1 << HS_MIN_LOG2))
        return 0;
    if (us > 0xFFFFFFFF)
        us = 0xFFFFFFFF;
    u32 l = log2_u32((u32)us);
    u32 b = 2 * (l - HS_MIN_LOG2) + (((u32)us >> (l - 1)) & 1) + 1;
    return b < HS_BUCKETS ? b : HS_BUCKETS - 1;
}

static __always_inline void on_connected(const void *sk, u64 skp, int direct)
{
    struct sock_ref ref;
    if (!sock_find(skp, &ref))
        return;
    struct sock_state *st = ref.st;
    u16 sport = SK_FIELD(u16, sk, SKC_NUM_OFF, direct);
    st->established = 1;
    st->start_ns = bpf_jiffies64();
    st->sport = sport;   /* the ephemeral port is bound by now */
    struct edge_val *ev = edge_vals(st->edge);
    if (!ev)
        return;
    EV_ADD(&ev->open_delta, 1);
    /* From the first SYN to the SYN-ACK's processing: a lost SYN shows as
     * the retransmission timeout (1 s, then 3 s) it cost the client.  The
     * kernel read the same monotonic clock on taking in the SYN-ACK, just
     * before this state change (tcp_rcv_state_process refreshes
     * tcp_clock_cache for a SYN_SENT socket), which saves reading it again
     * here; a reading from before the SYN's stamp, or far after it, is not
     * that one (a kernel that refreshes it elsewhere, or on another clock)
     * and the clock is read after all, counted (the tests expect none).  A
     * stale reading from after the stamp (tcp_connect refreshes it when it
     * sends the SYN) cannot be told apart here: the tests check that the
     * loopback handshakes take about as long as the clients' connect(). */
    u64 end = 0;
    const void *tcp = tcp_sock_of(sk, direct);
    if (tcp)
        end = SK_FIELD(u64, tcp, TCP_CLOCK_CACHE_OFF, direct);
    if (end < st->syn_ns || end - st->syn_ns > HS_MAX_NS) {
        end = bpf_ktime_get_ns();
        count(0, STAT_HANDSHAKE_CLOCK_READS);
    }
    u64 took = end - st->syn_ns;
    EV_ADD(&ev->handshakes, 1);
    EV_ADD(&ev->handshake_ns_sum, took);
    u32 b = hs_bucket(took);
    /* Keep the mask: the compiler knows b < HS_BUCKETS, the verifier has
     * lost track of it by the time of the load. */
    asm volatile("" : "+r"(b));
    EV_ADD(&ev->handshake_hist[b & (HS_BUCKETS - 1)], 1);
}

/* Runs in softirq: charge the process that listens on (netns, port). */
static __always_inline void on_accept(const struct tp_state *args,
                                      u64 skp, u32 netns)
{
    struct edge_key k = {};
    k.netns = netns;
    k.direction = DIR_INBOUND;
    k.lport = args->sport;
    tp_addrs(args, k.laddr, k.raddr);
    struct sock_state st = {};
    st.edge = edge_id_accepted(&k);
    st.start_ns = bpf_jiffies64();
    st.sport = args->sport;
    st.dport = args->dport;
    st.established = 1;
    /* The socket is locked while its state changes, so its close cannot
     * run between the table's entry and the open count below.  A refused
     * socket is counted as accepted, never as open. */
    struct edge_val *ev = edge_vals(st.edge);
    int followed = follow(skp, &st, ev);
    if (ev) {
        EV_ADD(&ev->accepts, 1);
        if (followed)
            EV_ADD(&ev->open_delta, 1);
    }
}

/*
 * What an established connection carried, read once at its close (offsets
 * from BTF).  struct tcp_sock counts in sequence space, where a SYN and a
 * FIN take one byte each: bytes_acked includes our SYN (a connect's is
 * acknowledged by the SYN-ACK; an accepted socket starts past it) and our
 * FIN once acknowledged - queued when the socket left ESTABLISHED or
 * CLOSE_WAIT for a FIN state, acknowledged when snd_una has reached
 * write_seq; bytes_received includes the peer's FIN, whose arrival
 * tcp_fin() marks with SOCK_DONE in sk_flags.  What remains is payload,
 * each byte once however often it was sent.  total_retrans counts
 * retransmitted segments as ss(8) shows them: SYNs included, tail loss
 * probes not.  The BTF-typed program needs a tcp_sock pointer for the
 * verifier to allow loads beyond struct sock; the plain one reads through
 * the helper, a call per field.
 */
static __always_inline void add_totals(const void *sk, struct edge_val *ev, int oldstate,
                                       int outbound, int direct)
{
    const void *tcp = tcp_sock_of(sk, direct);
    if (!tcp)
        return;
    u64 sent = SK_FIELD(u64, tcp, TCP_BYTES_ACKED_OFF, direct);
    u64 received = SK_FIELD(u64, tcp, TCP_BYTES_RECEIVED_OFF, direct);
    u32 retrans = SK_FIELD(u32, tcp, TCP_TOTAL_RETRANS_OFF, direct);
    if (outbound && sent)
        sent--;
    if ((oldstate == P_TCP_FIN_WAIT1 || oldstate == P_TCP_FIN_WAIT2 || oldstate == P_TCP_CLOSING ||
         oldstate == P_TCP_LAST_ACK) && sent &&
        SK_FIELD(u32, tcp, TCP_SND_UNA_OFF, direct) == SK_FIELD(u32, tcp, TCP_WRITE_SEQ_OFF, direct))
        sent--;
    if (received && (SK_FIELD(unsigned long, sk, SK_FLAGS_OFF, direct) >> SOCK_DONE_BIT) & 1)
        received--;
    /* Most connections move bytes one way only and retransmit nothing:
     * skip the writes, and the cache lines, that would add zero. */
    if (sent)
        EV_ADD(&ev->bytes_sent, sent);
    if (received)
        EV_ADD(&ev->bytes_received, received);
    if (retrans)
        EV_ADD(&ev->retransmits, retrans);
}

/*
 * A followed socket: its entry says which edge it belongs to; of the
 * socket only the totals of an established connection are read.  Returns
 * 0 when not followed.
 */
static __always_inline int close_followed(const void *sk, u64 skp, int oldstate, int direct)
{
    struct sock_ref ref;
    if (!sock_find(skp, &ref))
        return 0;
    struct sock_state *st = ref.st;
    struct edge_val *ev = edge_vals(st->edge);
    if (ev) {
        EV_ADD(&ev->held, -1);
        if (st->established) {
            EV_ADD(&ev->closes, 1);
            EV_ADD(&ev->open_delta, -1);
            EV_ADD(&ev->duration_jiffies_sum, bpf_jiffies64() - st->start_ns);
            /* An orderly close leaves ESTABLISHED for FIN_WAIT1 (local
             * close) or CLOSE_WAIT (peer's FIN) and reaches CLOSE from
             * FIN_WAIT2, CLOSING, LAST_ACK or TIME_WAIT's hand-over.  Straight
             * from ESTABLISHED or CLOSE_WAIT is a reset sent (abortive close,
             * unread data, tcp_disconnect) or received, or a timeout that
             * gave up on the peer (tcp_write_err). */
            if (oldstate == P_TCP_ESTABLISHED || oldstate == P_TCP_CLOSE_WAIT)
                EV_ADD(&ev->aborts, 1);
            add_totals(sk, ev, oldstate, st->outbound, direct);
        } else if (oldstate == P_TCP_SYN_SENT) {
            EV_ADD(&ev->failures, 1);
        }
    }
    sock_release(&ref);
    return 1;
}

/*
 * Not followed: a connection from a /proc snapshot, or one the full socks
 * map refused (seeded by a reconciliation), or neither.
 */
static __always_inline void close_seeded(struct tuple_key *tk)
{
    struct seed_val *sv = seeded.lookup(tk);
    if (!sv)
        return;
    struct edge_val *ev = edge_vals(edge_id(&sv->edge, COMM_COPY, sv->comm));
    if (ev) {
        EV_ADD(&ev->closes, 1);
        EV_ADD(&ev->open_delta, -1);
    }
    seeded.delete(tk);
}

/*
 * The socket's addresses, ports, family and network namespace (all in
 * struct sock_common; without BTF typing in one read of its leading bytes)
 * and its protocol: inet_sock_set_state also fires for SCTP and for
 * MPTCP's own sockets, whose subflows are the TCP sockets counted here.  On
 * the way to CLOSE tcp_set_state releases the bound port (skc_num = 0)
 * before the state changes, so a closing socket's port comes from
 * inet_sport, which stays.  Returns the namespace inode, or -1 for a socket
 * that is not TCP.
 */
static __always_inline long sk_read(const void *sk, int os, int ns, struct tp_state *e, int direct)
{
    /* The tracepoint only fires for full sockets: their protocol is a
     * field of struct sock. */
    if (SK_FIELD(u16, sk, SK_PROTOCOL_OFF, direct) != P_IPPROTO_TCP)
        return -1;
    u64 head[(SKC_HEAD_LEN + 7) / 8];
    const void *h = sk;
    if (!direct) {
        if (bpf_probe_read_kernel(head, sizeof(head), sk) != 0)
            return -1;
        h = head;
    }
    const u8 *b = (const u8 *)h;
    u16 dport_be = *(const u16 *)(b + SKC_DPORT_OFF);
    u16 num = *(const u16 *)(b + SKC_NUM_OFF);
    e->family = *(const u16 *)(b + SKC_FAMILY_OFF);
    /* skc_daddr, then skc_rcv_saddr: the two halves of skc_addrpair */
    u32 daddr = *(const u32 *)(b + SKC_ADDRS_OFF);
    u32 saddr = *(const u32 *)(b + SKC_ADDRS_OFF + 4);
    __builtin_memcpy(e->daddr, &daddr, 4);
    __builtin_memcpy(e->saddr, &saddr, 4);
    __builtin_memcpy(e->daddr_v6, b + SKC_V6_DADDR_OFF, 16);
    __builtin_memcpy(e->saddr_v6, b + SKC_V6_RCV_SADDR_OFF, 16);
    const void *net = *(const void * const *)(b + SKC_NET_OFF);
    if (ns == P_TCP_CLOSE) {
        /* BTF-typed, inet_sport (beyond struct sock) can only be read
         * through a struct tcp_sock pointer. */
        const void *tcp = tcp_sock_of(sk, direct);
        if (!tcp)
            return -1;
        u16 sport_be = SK_FIELD(u16, tcp, INET_SPORT_OFF, direct);
        num = (sport_be >> 8) | ((sport_be & 0xff) << 8);
    }
    e->skaddr = sk;
    e->oldstate = os;
    e->newstate = ns;
    e->sport = num;
    e->dport = (dport_be >> 8) | ((dport_be & 0xff) << 8);
    return net ? SK_FIELD(u32, net, NET_NS_INUM_OFF, direct) : 0;
}

/*
 * A number that names the socket, to hash and to keep in the socket table.
 * The BTF-typed program's argument is a typed pointer, on which the
 * verifier refuses arithmetic and partial reads, but it allows (to a loader
 * with CAP_PERFMON) the difference of two pointers as a number: the socket's
 * distance from the config map's value, which stays where it is while the
 * program is loaded.  The plain raw tracepoint's argument is a number.
 */
static __always_inline u64 sk_address(const void *sk, int direct)
{
    if (!direct)
        return (u64)sk;
    u32 slot = 0;
    u32 *base = config.lookup(&slot);
    if (!base)
        return 0;
    return (u64)sk - (u64)base;
}

enum transition { T_LISTEN = 1, T_UNLISTEN, T_CONNECT, T_CONNECTED, T_ACCEPT, T_CLOSE };

static __always_inline int on_state(const void *sk, int os, int ns, int direct)
{
    int t;
    /* Most state changes (FIN_WAIT*, CLOSE_WAIT, LAST_ACK, the child's
     * LISTEN -> SYN_RECV) change nothing we count: leave before any read. */
    if (ns == P_TCP_LISTEN)
        t = T_LISTEN;
    else if (os == P_TCP_LISTEN && ns == P_TCP_CLOSE)
        t = T_UNLISTEN;
    else if (os == P_TCP_CLOSE && ns == P_TCP_SYN_SENT)
        t = T_CONNECT;
    else if (os == P_TCP_SYN_SENT && ns == P_TCP_ESTABLISHED)
        t = T_CONNECTED;
    else if (os == P_TCP_SYN_RECV && ns == P_TCP_ESTABLISHED)
        t = T_ACCEPT;
    else if (ns == P_TCP_CLOSE)
        t = T_CLOSE;
    else
        return 0;
    count(0, STAT_EVENTS);
    u64 skp = sk_address(sk, direct);
    if (!skp)
        return 0;
    /* Only sockets that hold an entry (TCP, connecting) matter here. */
    if (t == T_CONNECTED) {
        on_connected(sk, skp, direct);
        return 0;
    }
    /* A followed socket's close needs nothing but its address - unless
     * userspace is reading /proc, when every closing tuple is noted. */
    u32 seeding = t == T_CLOSE ? cfg(CFG_SEEDING) : 0;
    int opening = os == P_TCP_SYN_SENT || os == P_TCP_SYN_RECV;
    if (t == T_CLOSE && !seeding && (close_followed(sk, skp, os, direct) || opening))
        return 0;

    struct tp_state e = {};
    long netns = sk_read(sk, os, ns, &e, direct);
    if (netns < 0)
        return 0;
    switch (t) {
    case T_LISTEN:
        on_listen(&e, netns);
        break;
    case T_UNLISTEN:
        on_unlisten(&e, netns);
        break;
    case T_CONNECT:
        on_connect(&e, skp, netns);
        break;
    case T_ACCEPT:
        on_accept(&e, skp, netns);
        break;
    default: {
        struct tuple_key tk = {};
        if (!opening) {
            tk.netns = netns;
            tk.lport = e.sport;
            tk.rport = e.dport;
            tp_addrs(&e, tk.laddr, tk.raddr);
            /* Closed while userspace reads /proc: whatever it finds of this
             * connection in its snapshot is gone already, so it must not
             * seed it (userspace takes back what it seeded for these). */
            if (seeding) {
                u32 one = 1;
                if (orphans.update(&tk, &one) != 0)
                    count(1, DROP_ORPHANS);
            }
        }
        if (seeding && close_followed(sk, skp, os, direct))
            break;
        if (!opening)
            close_seeded(&tk);
    }
    }
    return 0;
}

/*
 * The entry points, both on the raw tracepoint inet_sock_set_state, whose
 * arguments are (struct sock *sk, int oldstate, int newstate).  Userspace
 * loads the BTF-typed one (BPF_TRACE_RAW_TP) where the kernel accepts it
 * and attaches the plain one otherwise; neither has a name BCC attaches by
 * itself.
 */
int phobos_state_btf(u64 *ctx)
{
    return on_state((const void *)ctx[0], (int)ctx[1], (int)ctx[2], 1);
}

int phobos_state_raw(struct bpf_raw_tracepoint_args *ctx)
{
    return on_state((const void *)ctx->args[0], (int)ctx->args[1], (int)ctx->args[2], 0);
}

#ifdef PHOBOS_CALL_PROBES
/*
 * kprobe/fentry mode only.
 *
 * inet_csk_accept returns in the context of the task that called accept(),
 * which for pre-forked servers is not always the one that called listen().
 * Refresh the listener entry so later accepted connections on (netns, port)
 * are charged to the process that accepts them.
 *
 * tcp_v4_connect/tcp_v6_connect can fail before the socket ever reaches
 * SYN_SENT (no route, no free port): the tracepoint never sees those, the
 * return probe counts them as connects that failed.
 */
#ifndef PHOBOS_FENTRY
#include <uapi/linux/ptrace.h>  /* struct pt_regs: user ABI, stable across kernels */
#endif

static __always_inline u32 sk_netns(const void *sk)
{
    const void *net = NULL;
    u32 inum = 0;
    bpf_probe_read_kernel(&net, sizeof(net), (const char *)sk + SKC_NET_OFF);
    if (!net)
        return 0;
    bpf_probe_read_kernel(&inum, sizeof(inum), (const char *)net + NET_NS_INUM_OFF);
    return inum;
}

static __always_inline void refresh_listener(const void *newsk)
{
    if (!newsk)
        return;
    u16 port = 0;
    bpf_probe_read_kernel(&port, sizeof(port), (const char *)newsk + SKC_NUM_OFF);
    struct listen_key lk = {.netns = sk_netns(newsk), .port = port};
    struct listen_val *lv = listeners.lookup(&lk);
    if (!lv)
        return;
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    int changed = lv->pid != pid;
    lv->pid = pid;
    bpf_get_current_comm(lv->comm, sizeof(lv->comm));
    if (changed)
        listeners_changed();
}

static __always_inline void connect_enter(const void *sk, const void *uaddr)
{
    u64 tid = bpf_get_current_pid_tgid();
    struct connect_call c = {.sk = sk, .uaddr = uaddr};
    connect_calls.update(&tid, &c);
}

static __always_inline void connect_return(int ret)
{
    u64 tid = bpf_get_current_pid_tgid();
    struct connect_call *c = connect_calls.lookup(&tid);
    if (!c)
        return;
    if (ret != 0 && !c->syn_sent) {
        struct edge_key k = {};
        u16 family = 0, port = 0;
        bpf_probe_read_kernel(&family, sizeof(family), c->uaddr);
        bpf_probe_read_kernel(&port, sizeof(port), (const char *)c->uaddr + 2);
        if (family == P_AF_INET) {
            k.raddr[10] = k.raddr[11] = 0xff;
            bpf_probe_read_kernel(k.raddr + 12, 4, (const char *)c->uaddr + 4);
        } else {
            bpf_probe_read_kernel(k.raddr, 16, (const char *)c->uaddr + 8);
        }
        k.netns = sk_netns(c->sk);
        k.pid = tid >> 32;
        k.direction = DIR_OUTBOUND;
        k.rport = (port >> 8) | ((port & 0xff) << 8);
        struct edge_val *ev = edge_vals(edge_id(&k, COMM_CURRENT, 0));
        if (ev) {
            EV_ADD(&ev->connects, 1);
            EV_ADD(&ev->failures, 1);
        }
    }
    connect_calls.delete(&tid);
}

#ifdef PHOBOS_FENTRY
KFUNC_PROBE(tcp_v4_connect, void *sk, void *uaddr)
{
    connect_enter(sk, uaddr);
    return 0;
}
KRETFUNC_PROBE(tcp_v4_connect, void *sk, void *uaddr, int addr_len, int ret)
{
    connect_return(ret);
    return 0;
}
KFUNC_PROBE(tcp_v6_connect, void *sk, void *uaddr)
{
    connect_enter(sk, uaddr);
    return 0;
}
KRETFUNC_PROBE(tcp_v6_connect, void *sk, void *uaddr, int addr_len, int ret)
{
    connect_return(ret);
    return 0;
}
#if ACCEPT_NARGS == 2
KRETFUNC_PROBE(inet_csk_accept, void *sk, void *arg, void *ret)
#else
KRETFUNC_PROBE(inet_csk_accept, void *sk, int flags, int *err, bool kern, void *ret)
#endif
{
    refresh_listener(ret);
    return 0;
}
#else
/* Named without the kprobe__ prefix: probe.py attaches them only in kprobe mode. */
int phobos_connect_enter(struct pt_regs *ctx)
{
    connect_enter((const void *)PT_REGS_PARM1(ctx), (const void *)PT_REGS_PARM2(ctx));
    return 0;
}

int phobos_connect_return(struct pt_regs *ctx)
{
    connect_return((int)PT_REGS_RC(ctx));
    return 0;
}

int phobos_accept_return(struct pt_regs *ctx)
{
    refresh_listener((const void *)PT_REGS_RC(ctx));
    return 0;
}
#endif
#endif
