"""Response shapes, for the OpenAPI page (``/docs``) and for clients that want to know what comes back."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

Modality = Literal["image", "text"]


class HitOut(BaseModel):
    id: int = Field(description="id of the hit in its modality's gallery (ids of images and texts overlap)")
    rank: int = Field(description="1 for the best hit")
    modality: Modality
    score: float = Field(description="final score, higher is better: stage 2's when reranked, else stage 1's "
                                     "(the Hamming similarity 1 - 2d/bits, or the float cosine where the index "
                                     "rescores its Hamming neighbours)")
    hamming: int = Field(description="stage-1 Hamming distance between the query's and the hit's codes")
    path: str | None = Field(None, description="image hits: the indexed file, shown, never fetched by clients")
    caption: str | None = Field(None, description="text hits: the caption")
    payload: Any = Field(None, description="what the index stored with the item (JSON)")
    item_url: str = Field(description="GET this for the item")
    thumbnail_url: str | None = Field(None, description="image hits with a file: a small JPEG")


class Timings(BaseModel):
    encode_ms: float | None = None
    stage1_ms: float | None = None
    stage2_ms: float | None = None
    total_ms: float = Field(description="the whole search in its worker thread, queueing excluded")


class SearchOut(BaseModel):
    query: dict[str, Any] = Field(description="what was searched: type text, image (an upload) or item")
    k: int
    rerank: str = Field(description="the stage 2 used: none, float, cross...")
    target: Modality | None = Field(description="the gallery searched (None: the index has nothing to search)")
    hits: list[HitOut]
    timings: Timings


class ItemOut(BaseModel):
    id: int
    modality: Modality
    path: str | None = None
    caption: str | None = None
    payload: Any = None
    thumbnail_url: str | None = None


class HealthOut(BaseModel):
    status: Literal["ok"]
    items: dict[str, int]


class StatsOut(BaseModel):
    counts: dict[str, int] = Field(description="items per gallery")
    model: str
    index: dict[str, Any]
    rerank: dict[str, Any]
    searches: dict[str, Any] = Field(description="count, and p50/p99 latency (ms) over the recent window")
    errors: int = Field(description="4xx and 5xx responses so far")
    thumbnails_cached: int


class ErrorOut(BaseModel):
    error: str = Field(description="what was wrong, naming the parameter or file")
    status: int
