/*
 * phobos.c - per-edge TCP connection counters, aggregated in the kernel.
 *
 * What it traces: every TCP state change seen by the stable tracepoint
 * sock:inet_sock_set_state (IPv4 and IPv6, v4-mapped v6 folded into v4):
 *   CLOSE    -> LISTEN       a listener appears (process context)
 *   LISTEN   -> CLOSE        a listener goes away
 *   CLOSE    -> SYN_SENT     connect() (process context: pid/comm are right)
 *   SYN_SENT -> ESTABLISHED  the connect succeeded (softirq)
 *   SYN_RECV -> ESTABLISHED  an accepted connection (softirq)
 *   any      -> CLOSE        end of a connection; from SYN_SENT it is a
 *                            failed connect (refused, timed out, reset)
 *
 * How: a per-socket hash keyed by the socket pointer remembers which edge a
 * socket belongs to, so that transitions running in softirq (where
 * "current" is whatever task happened to be interrupted) are charged to the
 * process that connected or listened.  Per-edge counters live in two hash
 * generations; userspace flips config[CFG_GEN] and drains the idle
 * generation, so no increment races with the read.  Nothing is sent to
 * userspace per event: no perf buffer, no ring buffer.
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
 * Why a plain hash and not an LRU: an LRU evicts the oldest socket silently
 * when it is full, and that socket's close is then lost (its edge's open
 * gauge stays one too high, with no trace of why).  A plain, preallocated
 * hash refuses the new socket instead; the refusal is counted exactly in
 * drops[DROP_SOCKS], the refused socket adds nothing to the open gauge, and
 * userspace reconciles: after an interval with drops it reads the kernel's
 * socket list and enters the open connections the map refused into the
 * "seeded" map (keyed by 4-tuple), whose close is counted like that of a
 * connection that predates the tracer.  Entries cannot leak: every TCP
 * socket that passes CLOSE->SYN_SENT or SYN_RECV->ESTABLISHED later passes
 * ->CLOSE (tcp_set_state, tcp_done, tcp_disconnect all go through
 * inet_sk_state_store, which fires the tracepoint) - unless the kernel
 * skipped this program because another tracing program was running on the
 * CPU (counted by the kernel as the program's recursion_misses, which
 * userspace reports).  An entry whose close was missed is found when the
 * kernel reuses the socket's address for a new connection; the stale
 * entry's open count is then taken back (stats[STAT_MISSED_CLOSES]).  Until
 * then (the slab normally hands a freed socket's memory to the next socket
 * allocated on that CPU) it holds a slot and one open connection too many.
 *
 * Cost: a handful of hash lookups per state change (a TCP connection has
 * about five), none per packet.  Bytes are not counted: the tracepoint does
 * not carry them and reading them at close would need more struct offsets.
 * A full socks map costs one failed insert per refused socket and one
 * seeded-map lookup at its close.  Measured here with bpf_stats on a
 * loopback connect/accept/close loop: about 400 ns per traced state change
 * (LRU 384, this hash 397 with the stale-entry lookup, a full map 380).
 *
 * Caveats: the tracepoint has no network namespace field, so netns is read
 * from sk->__sk_common.skc_net->ns.inum with byte offsets that userspace
 * takes from the running kernel's BTF and passes as -D flags (kernel headers
 * may not match the kernel).  Accepted connections are charged to the
 * process that called listen() on (netns, port); a listener shared by
 * forked workers is charged to the one that listened (kprobe/fentry mode
 * refreshes the listener from inet_csk_accept, see PHOBOS_CALL_PROBES).  A
 * socket refused by a full socks map has its connect or accept counted but
 * not its failure, close or duration unless a reconciliation seeded it
 * while it was open.  Connections that were open before the tracer started
 * (or that the socks map refused) are matched by 4-tuple against the
 * "seeded" map that userspace fills from /proc, so their close is counted
 * once and never as a new connect.
 */

#ifndef SKC_NET_OFF
#error "SKC_NET_OFF (offset of skc_net in struct sock) must be passed from BTF"
#endif
#ifndef NET_NS_INUM_OFF
#error "NET_NS_INUM_OFF (offset of ns.inum in struct net) must be passed from BTF"
#endif
#ifndef MAX_EDGES
#define MAX_EDGES 16384
#endif
#ifndef MAX_SOCKS
#define MAX_SOCKS 65536
#endif
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
#define P_TCP_CLOSE 7
#define P_TCP_LISTEN 10

#define DIR_OUTBOUND 1
#define DIR_INBOUND 2

/* config[] slots, written by userspace */
#define CFG_GEN 0      /* which edges map the kernel writes: 0 or 1 */
#define CFG_SEEDING 1  /* 1 while userspace reads /proc (start-up, reconciliation) */

/* drops[] slots: failed map updates, per CPU */
#define DROP_EDGES 0
#define DROP_SOCKS 1
#define DROP_LISTENERS 2
#define DROP_ORPHANS 3
#define DROP_SLOTS 4

/* stats[] slots, per CPU */
#define STAT_EVENTS 0
#define STAT_ACCEPT_NO_LISTENER 1
#define STAT_MISSED_CLOSES 2   /* stale socks entries found at address reuse */
#define STAT_SLOTS 3

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

struct edge_val {
    u64 connects;
    u64 accepts;
    u64 closes;
    u64 failures;
    s64 open_delta;     /* +1 established, -1 closed; userspace sums it */
    u64 duration_ns_sum;
    u64 bytes_sent;
    u64 bytes_received;
    char comm[16];      /* at creation: short-lived clients are gone by drain */
};

struct sock_state {
    struct edge_key edge;
    u64 start_ns;
    u16 sport;          /* actual ports, to match the /proc snapshot */
    u16 dport;
    u32 established;
    char comm[16];
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
 * A copy of the tracepoint's fields: BCC declares the tracepoint's own args
 * struct only inside TRACEPOINT_PROBE, and the helpers need them too.
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

BPF_HASH(edges0, struct edge_key, struct edge_val, MAX_EDGES);
BPF_HASH(edges1, struct edge_key, struct edge_val, MAX_EDGES);
/* Plain, preallocated: a full map refuses (counted) instead of evicting. */
BPF_HASH(socks, u64, struct sock_state, MAX_SOCKS);
BPF_HASH(listeners, struct listen_key, struct listen_val, MAX_LISTENERS);
BPF_HASH(seeded, struct tuple_key, struct seed_val, MAX_SEEDED);
/* 4-tuples closed while userspace reads /proc; it clears the map after. */
BPF_HASH(orphans, struct tuple_key, u32, MAX_ORPHANS);
BPF_ARRAY(config, u32, 2);
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

/* The counters of an edge in the generation the kernel currently writes. */
static __always_inline struct edge_val *edge_get(struct edge_key *k, const char *comm)
{
    u32 gen = cfg(CFG_GEN);
    struct edge_val *v = gen ? edges1.lookup(k) : edges0.lookup(k);
    if (v)
        return v;
    struct edge_val init = {};
    __builtin_memcpy(init.comm, comm, sizeof(init.comm));
    /* NOEXIST: another CPU may have created it meanwhile; then use that. */
    int err = gen ? edges1.insert(k, &init) : edges0.insert(k, &init);
    v = gen ? edges1.lookup(k) : edges0.lookup(k);
    if (!v && err)
        count(1, DROP_EDGES);
    return v;
}

static __always_inline void on_listen(const struct tp_state *args, u32 netns)
{
    struct listen_key lk = {.netns = netns, .port = args->sport};
    struct listen_val *lv = listeners.lookup(&lk);
    u32 pid = bpf_get_current_pid_tgid() >> 32;
    if (lv) {
        __sync_fetch_and_add(&lv->count, 1);
        lv->pid = pid;
        bpf_get_current_comm(lv->comm, sizeof(lv->comm));
        return;
    }
    struct listen_val nv = {.pid = pid, .count = 1};
    u8 raddr[16];
    tp_addrs(args, nv.addr, raddr);
    bpf_get_current_comm(nv.comm, sizeof(nv.comm));
    if (listeners.insert(&lk, &nv) != 0 && !listeners.lookup(&lk))
        count(1, DROP_LISTENERS);
}

static __always_inline void on_unlisten(const struct tp_state *args, u32 netns)
{
    struct listen_key lk = {.netns = netns, .port = args->sport};
    struct listen_val *lv = listeners.lookup(&lk);
    if (!lv)
        return;
    /* The LLVM BPF target here cannot use the value XADD returns. */
    if (lv->count <= 1)
        listeners.delete(&lk);
    else
        __sync_fetch_and_add(&lv->count, -1);
}

/*
 * A socks entry for a socket that is only now connecting or being accepted
 * belongs to an earlier socket at the same address whose close this program
 * never saw (every seen close deletes the entry).  Take back what that
 * socket added to its edge's open gauge before the entry is overwritten.
 */
static __always_inline void forget_stale(u64 skp)
{
    struct sock_state *old = socks.lookup(&skp);
    if (!old)
        return;
    count(0, STAT_MISSED_CLOSES);
    if (!old->established)
        return;
    struct edge_val *ev = edge_get(&old->edge, old->comm);
    if (ev)
        __sync_fetch_and_add(&ev->open_delta, -1);
}

static __always_inline void on_connect(const struct tp_state *args,
                                       u64 skp, u32 netns)
{
    struct sock_state st = {};
    st.edge.netns = netns;
    st.edge.pid = bpf_get_current_pid_tgid() >> 32;
    st.edge.direction = DIR_OUTBOUND;
    st.edge.rport = args->dport;
    tp_addrs(args, st.edge.laddr, st.edge.raddr);
    bpf_get_current_comm(st.comm, sizeof(st.comm));
    st.start_ns = bpf_ktime_get_ns();
    st.dport = args->dport;
    struct edge_val *ev = edge_get(&st.edge, st.comm);
    if (ev)
        __sync_fetch_and_add(&ev->connects, 1);
#ifdef PHOBOS_CALL_PROBES
    /* CLOSE->SYN_SENT runs inside the connect call: the return probe must
     * not count this connect again if the call fails after this point,
     * whether or not the socket got an entry below. */
    u64 tid = bpf_get_current_pid_tgid();
    struct connect_call *call = connect_calls.lookup(&tid);
    if (call)
        call->syn_sent = 1;
#endif
    forget_stale(skp);
    /* Full map: the connect is counted, the socket is not followed.  Its
     * ESTABLISHED then finds no entry and adds nothing to the open gauge. */
    if (socks.update(&skp, &st) != 0)
        count(1, DROP_SOCKS);
}

static __always_inline void on_connected(const struct tp_state *args, u64 skp)
{
    struct sock_state *st = socks.lookup(&skp);
    if (!st)
        return;
    st->established = 1;
    st->start_ns = bpf_ktime_get_ns();
    st->sport = args->sport;   /* the ephemeral port is bound by now */
    struct edge_val *ev = edge_get(&st->edge, st->comm);
    if (ev)
        __sync_fetch_and_add(&ev->open_delta, 1);
}

/* Runs in softirq: charge the process that listens on (netns, port). */
static __always_inline void on_accept(const struct tp_state *args,
                                      u64 skp, u32 netns)
{
    struct sock_state st = {};
    struct listen_key lk = {.netns = netns, .port = args->sport};
    struct listen_val *lv = listeners.lookup(&lk);
    if (lv) {
        st.edge.pid = lv->pid;
        __builtin_memcpy(st.comm, lv->comm, sizeof(st.comm));
    } else {
        count(0, STAT_ACCEPT_NO_LISTENER);
    }
    st.edge.netns = netns;
    st.edge.direction = DIR_INBOUND;
    st.edge.lport = args->sport;
    tp_addrs(args, st.edge.laddr, st.edge.raddr);
    st.start_ns = bpf_ktime_get_ns();
    st.sport = args->sport;
    st.dport = args->dport;
    st.established = 1;
    forget_stale(skp);
    /* The socket is locked while its state changes, so its close cannot
     * run between the insert and the open count below. */
    int followed = socks.update(&skp, &st) == 0;
    if (!followed)
        count(1, DROP_SOCKS);   /* counted as accepted, never as open */
    struct edge_val *ev = edge_get(&st.edge, st.comm);
    if (ev) {
        __sync_fetch_and_add(&ev->accepts, 1);
        if (followed)
            __sync_fetch_and_add(&ev->open_delta, 1);
    }
}

static __always_inline void on_close(const struct tp_state *args, u64 skp)
{
    int opening = args->oldstate == P_TCP_SYN_SENT || args->oldstate == P_TCP_SYN_RECV;
    struct tuple_key tk = {};
    if (!opening) {
        tk.netns = sk_netns(args->skaddr);
        tk.lport = args->sport;
        tk.rport = args->dport;
        tp_addrs(args, tk.laddr, tk.raddr);
        /* Closed while userspace reads /proc: whatever it finds of this
         * connection in its snapshot is gone already, so it must not seed
         * it (userspace takes back what it seeded for these tuples). */
        if (cfg(CFG_SEEDING)) {
            u32 one = 1;
            if (orphans.update(&tk, &one) != 0)
                count(1, DROP_ORPHANS);
        }
    }
    struct sock_state *st = socks.lookup(&skp);
    if (st) {
        struct edge_val *ev = edge_get(&st->edge, st->comm);
        if (ev) {
            if (st->established) {
                __sync_fetch_and_add(&ev->closes, 1);
                __sync_fetch_and_add(&ev->open_delta, -1);
                __sync_fetch_and_add(&ev->duration_ns_sum, bpf_ktime_get_ns() - st->start_ns);
            } else if (args->oldstate == P_TCP_SYN_SENT) {
                __sync_fetch_and_add(&ev->failures, 1);
            }
        }
        socks.delete(&skp);
        return;
    }
    if (opening)
        return;
    /* Not followed: a connection from a /proc snapshot, or one the full
     * socks map refused (seeded by a reconciliation), or neither. */
    struct seed_val *sv = seeded.lookup(&tk);
    if (sv) {
        struct edge_val *ev = edge_get(&sv->edge, sv->comm);
        if (ev) {
            __sync_fetch_and_add(&ev->closes, 1);
            __sync_fetch_and_add(&ev->open_delta, -1);
        }
        seeded.delete(&tk);
    }
}

enum transition { T_LISTEN = 1, T_UNLISTEN, T_CONNECT, T_CONNECTED, T_ACCEPT, T_CLOSE };

TRACEPOINT_PROBE(sock, inet_sock_set_state)
{
    if (args->protocol != P_IPPROTO_TCP)
        return 0;
    count(0, STAT_EVENTS);
    int os = args->oldstate, ns = args->newstate, t;
    /* Most state changes (FIN_WAIT*, CLOSE_WAIT, LAST_ACK, the child's
     * LISTEN -> SYN_RECV) change nothing we count: leave before any copy. */
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

    struct tp_state e = {
        .skaddr = args->skaddr,
        .oldstate = os,
        .newstate = ns,
        .sport = args->sport,
        .dport = args->dport,
        .family = args->family,
    };
    __builtin_memcpy(e.saddr, args->saddr, 4);
    __builtin_memcpy(e.daddr, args->daddr, 4);
    __builtin_memcpy(e.saddr_v6, args->saddr_v6, 16);
    __builtin_memcpy(e.daddr_v6, args->daddr_v6, 16);
    u64 skp = (u64)e.skaddr;

    switch (t) {
    case T_LISTEN:
        on_listen(&e, sk_netns(e.skaddr));
        break;
    case T_UNLISTEN:
        on_unlisten(&e, sk_netns(e.skaddr));
        break;
    case T_CONNECT:
        on_connect(&e, skp, sk_netns(e.skaddr));
        break;
    case T_CONNECTED:
        on_connected(&e, skp);
        break;
    case T_ACCEPT:
        on_accept(&e, skp, sk_netns(e.skaddr));
        break;
    default:
        on_close(&e, skp);
    }
    return 0;
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
    lv->pid = bpf_get_current_pid_tgid() >> 32;
    bpf_get_current_comm(lv->comm, sizeof(lv->comm));
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
        struct sock_state st = {};
        u16 family = 0, port = 0;
        bpf_probe_read_kernel(&family, sizeof(family), c->uaddr);
        bpf_probe_read_kernel(&port, sizeof(port), (const char *)c->uaddr + 2);
        if (family == P_AF_INET) {
            st.edge.raddr[10] = st.edge.raddr[11] = 0xff;
            bpf_probe_read_kernel(st.edge.raddr + 12, 4, (const char *)c->uaddr + 4);
        } else {
            bpf_probe_read_kernel(st.edge.raddr, 16, (const char *)c->uaddr + 8);
        }
        st.edge.netns = sk_netns(c->sk);
        st.edge.pid = tid >> 32;
        st.edge.direction = DIR_OUTBOUND;
        st.edge.rport = (port >> 8) | ((port & 0xff) << 8);
        bpf_get_current_comm(st.comm, sizeof(st.comm));
        struct edge_val *ev = edge_get(&st.edge, st.comm);
        if (ev) {
            __sync_fetch_and_add(&ev->connects, 1);
            __sync_fetch_and_add(&ev->failures, 1);
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
