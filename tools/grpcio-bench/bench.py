#!/usr/bin/env python3
"""change -> kernel -> ack, timed by a client on Google's grpcio.

What `cassette-bench e2e` times, from outside the Rust code: each change is
an AddRule (the first 50) or an UpdateRule that toggles one of them, then a
WaitForSync of the revision it answered, which returns once the instance's
enforcer acknowledged that revision as applied in its kernel. One change at
a time; prints one JSON line (milliseconds).

Run by scripts/bench-grpcio.sh, which starts the service and the enforcer;
the stubs are generated from proto/ with grpc_tools.protoc (--stubs).
"""

import argparse
import json
import sys
import time

RULES = 50


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", required=True, help="grpcio target, e.g. unix:/path or 127.0.0.1:50051")
    parser.add_argument("--stubs", required=True, help="directory of the generated cassette/firewall/v1 stubs")
    parser.add_argument("--instance", default="bench-1")
    parser.add_argument("--changes", type=int, default=1000)
    args = parser.parse_args()
    if args.changes <= RULES:
        parser.error(f"--changes must be more than {RULES}")

    sys.path.insert(0, args.stubs)
    import grpc
    from google.protobuf import duration_pb2
    from cassette.firewall.v1 import firewall_pb2 as pb
    from cassette.firewall.v1 import firewall_pb2_grpc as rpc

    # Over a Unix socket grpcio sends the socket's path, percent-encoded, as
    # :authority, which the service's HTTP/2 library refuses (README, The API).
    channel = grpc.insecure_channel(args.target, options=[("grpc.default_authority", "localhost")])
    grpc.channel_ready_future(channel).result(timeout=30)
    client = rpc.FirewallServiceStub(channel)
    timeout = duration_pb2.Duration(seconds=30)

    def wait(revision):
        status = client.WaitForSync(
            pb.WaitForSyncRequest(instance_id=args.instance, revision=revision, timeout=timeout)
        )
        if status.applied_revision < revision:
            raise SystemExit(f"revision {revision} not applied: {status}")

    created = client.CreateFirewall(pb.CreateFirewallRequest(instance_id=args.instance))
    wait(created.revision)

    rule_ids = []
    latencies = []
    for i in range(args.changes):
        started = time.perf_counter()
        if i < RULES:
            port = 20000 + i
            firewall = client.AddRule(pb.AddRuleRequest(instance_id=args.instance, port=port))
            rule_ids.append(next(r.id for r in firewall.rules if r.port == port))
            revision = firewall.revision
        else:
            k = i - RULES
            revision = client.UpdateRule(
                pb.UpdateRuleRequest(
                    instance_id=args.instance,
                    rule_id=rule_ids[k % RULES],
                    enabled=(k // RULES) % 2 == 1,
                )
            ).revision
        wait(revision)
        latencies.append((time.perf_counter() - started) * 1000)

    latencies.sort()

    def percentile(p):
        # As cassette-bench's: the sample at rank round(p% of (n - 1)).
        return round(latencies[round(p / 100 * (len(latencies) - 1))], 3)

    print(
        json.dumps(
            {
                "bench": "grpcio-e2e",
                "grpcio": grpc.__version__,
                "changes": len(latencies),
                "p50_ms": percentile(50),
                "p99_ms": percentile(99),
                "max_ms": round(latencies[-1], 3),
            }
        )
    )


if __name__ == "__main__":
    main()
