"""Live ingestion: exchange WebSocket streams → per-stream buffers → one batching writer.

`engine.IngestEngine` runs the asyncio side (connections, parsing, buffers, backfill);
`writer.CandleWriter` owns the database side in one thread.
"""
