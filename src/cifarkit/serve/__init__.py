"""`cifarkit serve`: a local web page and JSON API for a trained model and its runs.

`app` builds the FastAPI application (page, `/api/predict`, `/api/cam`, `/api/model`,
`/api/health`, the runs view); `batcher` merges concurrent requests into one forward pass;
`runs` lists run directories without ever taking a path from a client; `launch` starts a
server subprocess for tests and benchmarks. FastAPI and uvicorn are the `[serve]` extra, so
they are imported only here.
"""
