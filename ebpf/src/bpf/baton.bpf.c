// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Connect-time service load balancing (Kmesh workload mode shape): a TCP
 * connect() to a service VIP:port is rewritten to one backend before the
 * socket ever sends a packet, so there is no NAT state and no per-packet cost.
 */
#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "layout.h"

#define AF_INET 2
#define AF_INET6 10
#define IPPROTO_TCP 6
/* How often a connect re-reads the service when an endpoint update races it. */
#define LOOKUP_ATTEMPTS 4

/* A connect hook returning 0 makes connect() fail with EPERM. */
#define VERDICT_REFUSE 0
#define VERDICT_PASS 1

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BATON_MAX_FRONTENDS);
	__type(key, struct frontend_key);
	__type(value, struct frontend_value);
} frontend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BATON_MAX_SERVICES);
	__type(key, struct service_key);
	__type(value, struct service_value);
} service SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BATON_MAX_ENDPOINTS);
	__type(key, struct endpoint_key);
	__type(value, struct endpoint_value);
} endpoint SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, BATON_MAX_BACKENDS);
	__type(key, struct backend_key);
	__type(value, struct backend_value);
} backend SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, BATON_COUNTER_SLOTS);
	__type(key, __u32);
	__type(value, __u64);
} counters SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_ARRAY);
	__uint(max_entries, 1);
	__type(key, __u32);
	__type(value, struct meta_value);
} meta SEC(".maps");

#ifdef BATON_TEST_HOOKS
/*
 * Test builds only (cargo feature `test-hooks`, -DBATON_TEST_HOOKS): refuse
 * one in this many connects to a VIP that has endpoints, as the no-endpoint
 * path does (counted no_endpoint). 0 = off. The agent sets it at load from
 * BATON_TEST_REFUSE_ONE_IN; production objects have neither the variable
 * nor the code.
 */
const volatile __u32 test_refuse_one_in = 0;
#endif

static __always_inline void count(__u32 slot)
{
	__u64 *v = bpf_map_lookup_elem(&counters, &slot);

	if (v)
		*v += 1;
}

/* Picks the priority bucket to draw from, or -1 when the service has no usable endpoint. */
static __always_inline int pick_prio(const struct service_value *sv)
{
	if (sv->lb_policy != BATON_LB_FAILOVER)
		/* RANDOM keeps every endpoint in bucket 0; STRICT never leaves it. */
		return sv->prio_endpoint_count[0] ? 0 : -1;
#pragma unroll
	for (int p = 0; p < BATON_PRIO_COUNT; p++)
		if (sv->prio_endpoint_count[p])
			return p;
	return -1;
}

/* Service port -> target port; 0 when the port is not serviced. */
static __always_inline __u32 map_port(const struct service_value *sv, __u32 dport)
{
#pragma unroll
	for (int i = 0; i < BATON_MAX_PORTS; i++) {
		if (sv->service_port[i] == dport)
			return sv->target_port[i] ? sv->target_port[i] : dport;
	}
	return 0;
}

/*
 * Resolves VIP:dport to a backend. Returns VERDICT_PASS with *out == NULL when
 * the connect should go on untouched, VERDICT_REFUSE when it must fail.
 */
static __always_inline int resolve(const struct frontend_key *fk, __u32 dport,
				   const struct backend_value **out, __u32 *out_port)
{
	struct frontend_value *fv;
	struct service_value *sv;
	struct endpoint_value *ev;
	struct backend_value *bv;
	struct service_key sk = {};
	struct endpoint_key ek = {};
	__u32 target;
	int prio;

	*out = NULL;
	fv = bpf_map_lookup_elem(&frontend, fk);
	if (!fv) {
		count(BATON_CNT_NO_FRONTEND);
		return VERDICT_PASS;
	}
	sk.service_id = fv->service_id;

	/*
	 * The count and the endpoint are two lookups: the agent may shrink a
	 * bucket in between. It deletes tail keys only after lowering the count,
	 * so a miss means our count was stale: read the service again.
	 */
	for (int attempt = 0; attempt < LOOKUP_ATTEMPTS; attempt++) {
		sv = bpf_map_lookup_elem(&service, &sk);
		if (!sv)
			break;
		target = map_port(sv, dport);
		if (!target) {
			count(BATON_CNT_PORT_MISS);
			return VERDICT_PASS;
		}
		prio = pick_prio(sv);
		if (prio < 0)
			break;
		ek.service_id = sk.service_id;
		ek.prio = prio;
		ek.backend_index = bpf_get_prandom_u32() % sv->prio_endpoint_count[prio & 7] + 1;
		ev = bpf_map_lookup_elem(&endpoint, &ek);
		if (!ev) {
			count(BATON_CNT_ENDPOINT_RETRY);
			continue;
		}
		bv = bpf_map_lookup_elem(&backend, &ev->backend_uid);
		if (!bv) {
			count(BATON_CNT_BACKEND_MISS);
			continue;
		}
#ifdef BATON_TEST_HOOKS
		if (test_refuse_one_in && bpf_get_prandom_u32() % test_refuse_one_in == 0)
			break;
#endif
		*out = bv;
		*out_port = bv->port ? bv->port : target;
		return VERDICT_PASS;
	}
	count(BATON_CNT_NO_ENDPOINT);
	return VERDICT_REFUSE;
}

static __always_inline int is_v4_mapped(const __u32 *a)
{
	return a[0] == 0 && a[1] == 0 && a[2] == bpf_htonl(0xffff);
}

SEC("cgroup/connect4")
int baton_connect4(struct bpf_sock_addr *ctx)
{
	const struct backend_value *bv;
	struct frontend_key fk = {};
	__u32 port = 0;
	int verdict;

	if (ctx->protocol != IPPROTO_TCP)
		return VERDICT_PASS;
	count(BATON_CNT_CONNECT);
	fk.addr[2] = bpf_htonl(0xffff);
	fk.addr[3] = ctx->user_ip4;
	verdict = resolve(&fk, bpf_ntohs(ctx->user_port), &bv, &port);
	if (!bv)
		return verdict;
	if (!is_v4_mapped(bv->addr)) {
		count(BATON_CNT_FAMILY_MISMATCH);
		return VERDICT_REFUSE;
	}
	ctx->user_ip4 = bv->addr[3];
	ctx->user_port = bpf_htons(port);
	count(BATON_CNT_REDIRECTED);
	return VERDICT_PASS;
}

SEC("cgroup/connect6")
int baton_connect6(struct bpf_sock_addr *ctx)
{
	const struct backend_value *bv;
	struct frontend_key fk = {};
	__u32 port = 0;
	int verdict;

	if (ctx->protocol != IPPROTO_TCP)
		return VERDICT_PASS;
	count(BATON_CNT_CONNECT);
	fk.addr[0] = ctx->user_ip6[0];
	fk.addr[1] = ctx->user_ip6[1];
	fk.addr[2] = ctx->user_ip6[2];
	fk.addr[3] = ctx->user_ip6[3];
	verdict = resolve(&fk, bpf_ntohs(ctx->user_port), &bv, &port);
	if (!bv)
		return verdict;
	if (is_v4_mapped(bv->addr)) {
		count(BATON_CNT_FAMILY_MISMATCH);
		return VERDICT_REFUSE;
	}
	ctx->user_ip6[0] = bv->addr[0];
	ctx->user_ip6[1] = bv->addr[1];
	ctx->user_ip6[2] = bv->addr[2];
	ctx->user_ip6[3] = bv->addr[3];
	ctx->user_port = bpf_htons(port);
	count(BATON_CNT_REDIRECTED);
	return VERDICT_PASS;
}

char _license[] SEC("license") = "Dual BSD/GPL";
