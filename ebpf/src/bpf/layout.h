/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Map layouts shared by the datapath and the agent. The Rust mirrors live in
 * ebpf/src/layout.rs; a test compares both against this object's BTF, so any
 * change here must be made there too.
 *
 * BATON_LAYOUT selects the layout generation. Layout 1 is the default;
 * layout 2 exists so hot upgrades (and downgrades) can be tested across a real
 * layout change: it differs only in `endpoint` and `backend` (members added,
 * reordered, narrowed; larger max_entries), so the other maps are reused as
 * they are and those two must be migrated. The program behaves the same in
 * both: the members layout 2 adds are carried, never read.
 */
#ifndef BATON_LAYOUT_H
#define BATON_LAYOUT_H

#ifndef BATON_LAYOUT
#define BATON_LAYOUT 1
#endif

#define BATON_PRIO_COUNT 7
#define BATON_MAX_PORTS 10

#define BATON_MAX_FRONTENDS 131072
#define BATON_MAX_SERVICES 16384
#if BATON_LAYOUT == 1
#define BATON_MAX_ENDPOINTS 131072
#define BATON_MAX_BACKENDS 131072
#elif BATON_LAYOUT == 2
#define BATON_MAX_ENDPOINTS 262144
#define BATON_MAX_BACKENDS 262144
#else
#error "BATON_LAYOUT must be 1 or 2"
#endif
#define BATON_COUNTER_SLOTS 16

enum baton_lb_policy {
	BATON_LB_RANDOM = 0,
	BATON_LB_STRICT = 1,
	BATON_LB_FAILOVER = 2,
};

/* Per-CPU counter slots (index into the `counters` map). */
enum baton_counter {
	BATON_CNT_CONNECT = 0,         /* TCP connects seen by the hooks */
	BATON_CNT_REDIRECTED = 1,      /* rewritten to a backend */
	BATON_CNT_NO_FRONTEND = 2,     /* destination is not a VIP: untouched */
	BATON_CNT_PORT_MISS = 3,       /* VIP known, port not serviced: untouched */
	BATON_CNT_NO_ENDPOINT = 4,     /* service has no usable endpoint: refused */
	BATON_CNT_ENDPOINT_RETRY = 5,  /* endpoint lookup raced an update: retried */
	BATON_CNT_BACKEND_MISS = 6,    /* endpoint names a missing backend */
	BATON_CNT_FAMILY_MISMATCH = 7, /* backend family differs from the socket's */
};

/* Addresses are 16 bytes in network order; IPv4 is stored v4-mapped (::ffff:a.b.c.d). */
struct frontend_key {
	__u32 addr[4];
};

struct frontend_value {
	__u32 service_id;
};

struct service_key {
	__u32 service_id;
};

struct service_value {
	__u32 prio_endpoint_count[BATON_PRIO_COUNT];
	__u32 lb_policy;
	/* host order; 0 = unused slot. target_port 0 = same as service_port */
	__u32 service_port[BATON_MAX_PORTS];
	__u32 target_port[BATON_MAX_PORTS];
};

#if BATON_LAYOUT == 1
struct endpoint_key {
	__u32 service_id;
	__u32 prio;
	__u32 backend_index; /* 1-based, dense: 1..prio_endpoint_count[prio] */
};

struct endpoint_value {
	__u32 backend_uid;
};
#else
/* Same members as layout 1, prio and backend_index swapped: equal size, different key bytes. */
struct endpoint_key {
	__u32 service_id;
	__u32 backend_index; /* 1-based, dense: 1..prio_endpoint_count[prio] */
	__u32 prio;
};

struct endpoint_value {
	__u32 backend_uid;
	__u32 weight; /* relative weight; 0 = unweighted (not read by the program) */
};
#endif

struct backend_key {
	__u32 backend_uid;
};

#if BATON_LAYOUT == 1
struct backend_value {
	__u32 addr[4];
	__u32 port; /* host order; 0 = use the service's target port */
};
#else
/*
 * port is narrowed to 16 bits and moved first, and two members are added, so
 * a value copied byte for byte from layout 1 reads as a wrong address.
 */
struct backend_value {
	__u16 port;    /* host order; 0 = use the service's target port */
	__u16 zone;    /* locality zone id; 0 = unknown (not read by the program) */
	__u32 addr[4];
	__u32 flags;   /* reserved, 0 */
};
#endif

struct meta_value {
	__u32 layout_version;
	__u32 flags;
	__u64 generation;
};

#endif
