"""A real Dynamo 1.6.1 KV router (the PyPI wheel ai-dynamo-runtime==1.6.1) for the end-to-end specs.

It plays both Dynamo roles a worker-side publisher meets:
  - the worker's serving side: a DistributedRuntime with file discovery (DYN_FILE_KV) or etcd discovery
    (ETCD_ENDPOINTS; argument --discovery) serves {namespace}.{component}.{endpoint} and registers a model
    on it (register_model, a minimal card, the given KV block size and data-parallel range), so the router
    has a worker to route to; the served instance id (endpoint.connection_id()) is the worker id a
    publisher must put in its events and EventSource records;
  - the router: a KvRouter on that endpoint, which discovers EventSource/EventChannel records and
    consumes KV events from the event plane (zmq or nats, argument --event-plane).

Protocol (JSON lines; u64 values are decimal strings, since a JSON number loses them in JavaScript):
  stdout, once ready: {"ready": true, "dynamoVersion", "workerId": "<u64>", "namespace", "component", "endpoint",
                       "blockSize", "dpStart", "dpSize", "eventPlane", "discovery"}
  stdin, one query per line: {"id": n, "tokens": [int...], "lora": str|null, "salt": str|null}
                             or {"id": n, "op": "dump"} -> {"id": n, "dump": "<the router's dump_events() JSON>"}
  stdout, one answer per query: {"id": n, "best": {"workerId", "dpRank", "overlap"},
                                 "ranks": {"<dpRank>": device overlap blocks of this worker's rank},
                                 "hashes": ["<u64>" ...] (Dynamo's own block hashes of the tokens)}
                             or {"id": n, "error": "..."}
  stdin closed (or SIGTERM): shuts down and exits 0.
Everything listens on 127.0.0.1. Logs go to stderr.
"""

import argparse
import asyncio
import json
import os
import shutil
import signal
import sys
import tempfile

LOOPBACK_VARS = ("DYN_TCP_RPC_HOST", "DYN_TCP_RESPONSE_STREAM_HOST", "DYN_EVENT_PLANE_HOST", "DYN_SYSTEM_HOST")


def emit(obj):
    sys.stdout.write(json.dumps(obj, separators=(",", ":")) + "\n")
    sys.stdout.flush()


async def handler(request, context=None):
    # The router under test only scores workers; nothing is ever generated.
    yield {"token_ids": [], "finish_reason": "stop"}


async def answer(router, dyn, q, args):
    tokens = [int(t) for t in q["tokens"]]
    lora = q.get("lora") or None
    salt = q.get("salt") or None
    worker, rank, overlap = await router.best_worker(tokens, lora_name=lora, cache_namespace=salt)
    scores = await router.get_overlap_scores(tokens, lora_name=lora, include_shared=False, cache_namespace=salt)
    hashes = dyn.compute_block_hash_for_seq(tokens, args.block_size, lora_name=lora, cache_namespace=salt)
    ranks = {}
    for row in scores["workers"]:
        if row["worker_id"] == args.worker_id:
            ranks[str(row["dp_rank"])] = int(row["device_blocks"])
    return {
        "best": {"workerId": str(worker), "dpRank": int(rank), "overlap": int(overlap)},
        "ranks": ranks,
        "hashes": [str(h & 0xFFFFFFFFFFFFFFFF) for h in hashes],
    }


async def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--event-plane", choices=["zmq", "nats"], default="zmq")
    ap.add_argument("--discovery", choices=["file", "etcd"], default="file")
    ap.add_argument("--namespace", default="dynamo")
    ap.add_argument("--component", default="backend")
    ap.add_argument("--endpoint", default="generate")
    ap.add_argument("--model", default="dynamo-kv-e2e")
    ap.add_argument("--block-size", type=int, default=16)
    ap.add_argument("--dp-start", type=int, default=0)
    ap.add_argument("--dp-size", type=int, default=1)
    ap.add_argument("--event-threads", type=int, default=4)
    args = ap.parse_args()
    if args.discovery == "file" and not os.environ.get("DYN_FILE_KV"):
        sys.exit("DYN_FILE_KV must name the file discovery store's directory")
    if args.discovery == "etcd" and not os.environ.get("ETCD_ENDPOINTS"):
        sys.exit("ETCD_ENDPOINTS must name the etcd server")
    for v in LOOPBACK_VARS:
        os.environ.setdefault(v, "127.0.0.1")

    try:
        import importlib.metadata

        import dynamo._core as dyn

        version = importlib.metadata.version("ai-dynamo-runtime")
    except ImportError as e:
        sys.exit(f"{sys.executable} cannot import Dynamo ({e}): it needs ai-dynamo-runtime==1.6.1 (bash .ci/dynamo-venv)")

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)

    rt = dyn.DistributedRuntime(loop, args.discovery, "tcp", event_plane=args.event_plane)
    ep = rt.endpoint(f"{args.namespace}.{args.component}.{args.endpoint}")
    rc = dyn.ModelRuntimeConfig()
    rc.data_parallel_start_rank = args.dp_start
    rc.data_parallel_size = args.dp_size
    model_dir = tempfile.mkdtemp(prefix="dynamo-kv-model-")
    await dyn.register_model(
        dyn.ModelInput.Tokens,
        dyn.ModelType.Chat,
        ep,
        model_dir,
        args.model,
        worker_type=dyn.WorkerType.Aggregated,
        kv_cache_block_size=args.block_size,
        runtime_config=rc,
        skip_model_assets=True,
    )
    serving = asyncio.ensure_future(ep.serve_endpoint(handler))
    router = dyn.KvRouter(ep, args.block_size, dyn.KvRouterConfig(router_event_threads=args.event_threads))
    args.worker_id = ep.connection_id()
    emit(
        {
            "ready": True,
            "dynamoVersion": version,
            "workerId": str(args.worker_id),
            "namespace": args.namespace,
            "component": args.component,
            "endpoint": args.endpoint,
            "blockSize": args.block_size,
            "dpStart": args.dp_start,
            "dpSize": args.dp_size,
            "eventPlane": args.event_plane,
            "discovery": args.discovery,
        }
    )

    async def serve_queries():
        while True:
            line = await asyncio.to_thread(sys.stdin.readline)
            if line == "":
                return
            if not line.strip():
                continue
            q = json.loads(line)
            try:
                if q.get("op") == "dump":
                    out = {"dump": await router.dump_events()}
                else:
                    out = await answer(router, dyn, q, args)
            except Exception as e:  # a router that cannot answer yet (no worker discovered) reports it
                out = {"error": f"{type(e).__name__}: {e}"}
            out["id"] = q.get("id")
            emit(out)

    queries = asyncio.ensure_future(serve_queries())
    stopped = asyncio.ensure_future(stop.wait())
    await asyncio.wait([queries, stopped, serving], return_when=asyncio.FIRST_COMPLETED)
    for f in (queries, stopped, serving):
        f.cancel()
    rt.shutdown()
    shutil.rmtree(model_dir, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
