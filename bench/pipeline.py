"""How fast triage is compared with the broker itself: throughput, latency and memory.

One run on one machine, against a real Kafka-protocol broker (a memory-only tansu started here
on a free port, unless `KAFKA_BOOTSTRAP` is set) and the real Redis (`REDIS_URL`, default
127.0.0.1:6379), in its own namespace (topics, consumer groups, `gs:<namespace>:*` keys):

1. Corpus, seeded. `--posts` posts (default 100,000): English and Chinese (about 55/45),
   20-600 characters (log-normal, median ~110), four tenants (one on the domain-tag pack).
   30% are exact duplicates of earlier posts (half from a small "viral" set), 5% are
   near-duplicates: case, punctuation, emoji or whitespace variants (1-2 of them) of an
   earlier post of at least 40 characters, whose normal form differs from it (else they would
   be exact repeats). Sources are either a "history" of posts / 5 (at most 20,000) originals
   decided before the run - their verdicts are put in the cache and the near-duplicate index
   first, keyed exactly as triage keys them, as if scored yesterday - or posts of the stream
   itself at least `gap` = min(10,000, posts / 5) posts earlier. Outcomes are measured, not
   assumed, and printed per kind of post beside the expected counts.
2. Passthrough: the broker's ceiling. All posts are pre-produced (acks awaited) to `posts.v1`
   before anything consumes them. A consumer group built by guardstream's `make_consumer` /
   `make_producer` reads them and produces each to another topic, one batch at a time: fetch,
   send, await the acks, commit (`passthrough_msgs_per_s`, the ratio's denominator). A second
   group runs guardstream's own `BatchLoop` with a handler that only forwards: the runtime
   without triage's logic. Both run in this process while nothing else runs, timed from
   partition assignment to the last commit / acknowledgement.
3. Triage: the real process (`python -m guardstream triage`, started as
   `tests/support/processes.py` starts it, with its own `GUARDSTREAM_NAMESPACE`,
   `KAFKA_BOOTSTRAP`, `REDIS_URL`, `GUARDSTREAM_MODEL=tiny`, `GUARDSTREAM_HEALTH_PORT`) on the
   same pre-produced backlog. Throughput = posts / (CreateTime of its last output - the moment
   `/readyz` first answered 200, i.e. it holds its partitions). The end is detected by its
   group's committed offsets reaching the end of `posts.v1` (lag 0, polled every 0.2 s); the
   time comes from the output records (`score-requests` and the action topics, read back
   afterwards), so the polling does not blur it. The scorer stand-in's decisions carry a
   `gs-bench` header and are told apart.
4. The scorer is a STAND-IN, in this benchmark only: an asyncio consumer of
   `moderation.score-requests.v1` in this process (guardstream's `BatchLoop`, on its own event
   loop in a thread, sized never to be the bottleneck) that waits `--scorer-latency-ms` per
   batch, writes a verdict derived from the content key (85% safe, 10% unsafe, 5%
   controversial) to the real Redis verdict cache and near-duplicate index as the scorer does
   (so later repeats hit), and produces a `Decision` made by `guardstream.verdict.decisions.decide`
   with the shipped policy packs to its action topic. It skips the decision journal.
5. Latency: fresh posts of the same mix, paced at half the measured triage throughput for
   `--latency-seconds`. Per post, from its send (the moment `send()` is called, which is its
   CreateTime) to the CreateTime of an output record (when its producer took it): end to
   end, to the first decision (triage's for an exact or near hit, the stand-in's for a miss),
   and triage-added, to triage's own output (the decision of a hit, the score request of a
   miss). Outputs are collected by a group-less consumer here; when it reads them does not
   matter. For scale, the broker hop alone: send → read by a consumer built like triage's
   (`make_consumer`), which a downstream reader of the decisions also pays. Caveat: tansu
   does not answer a waiting fetch when data arrives, so each consumer hop - triage's
   included - costs a share of the fetch's max wait (one consumer, a record every 20 ms:
   p50 ~140 / 33 / 9 ms at `fetch_max_wait_ms` 500 (aiokafka's default) / 100 / 10;
   guardstream's `KAFKA_FETCH_MAX_WAIT_MS` default is 50), where Apache Kafka answers as soon
   as data is there. Read the latencies against the broker-hop row.
6. Peak RSS of the triage process (psutil, every 50 ms); CPU seconds per phase of triage, the
   broker, Redis and this process; how often triage's Redis calls missed their deadline
   (counted from its log: each is a fail-open miss).

Not measured: the real scorer or vLLM; a real Kafka cluster, replication or a network (all on
localhost; tansu's fetch behaviour above, and its ListOffsets answers a partition's last batch
base offset, so ends come from the producer's acks); more than one triage process;
rebalances, failures, retries; `response` posts. Everything shares this machine's cores: on 2
cores the broker, Redis, this process (producer, readers, stand-in) and triage compete - the
CPU table shows how much.

    .venv/bin/python bench/pipeline.py [--posts 100000] [--scorer-latency-ms 20]
        [--latency-seconds 20] [--latency-rate N] [--seed 7] [--profile triage.prof]
        [--keep-logs]

Progress goes to stderr; the table to stdout, and as its last line one JSON object.
`--profile FILE` runs triage under cProfile (its figures are then inflated) and prints where
its CPU time goes. Cleans up, also on failure, Ctrl-C or SIGTERM: triage and the broker are
stopped, `gs:<namespace>:*` deleted; topics go with the memory-only broker (on a given
`KAFKA_BOOTSTRAP` cluster they are left, under their namespace).
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import contextlib
import math
import os
import pstats
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import orjson
import psutil  # type: ignore[import-untyped]
import redis
from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from guardstream.contracts.events import ScoreRequest, Source, Verdict, utcnow
from guardstream.contracts.text import normalise
from guardstream.contracts.topics import Topic, TopicNames
from guardstream.devtools.produce import new_post
from guardstream.devtools.stack import tansu_command
from guardstream.model.guard import served_model_id
from guardstream.policy import load_registry
from guardstream.runtime.kafka import client_kwargs, ensure_topics, make_consumer, make_producer
from guardstream.runtime.loop import BatchLoop, LoopConfig, Records
from guardstream.runtime.settings import Settings
from guardstream.verdict.cache import CachedVerdict, RedisVerdictCache, VerdictKey
from guardstream.verdict.decisions import ACTION_TOPIC, Origin, decide, model_reason
from guardstream.verdict.intake import triage_record
from guardstream.verdict.neardup import RedisNearDuplicateIndex

BENCH_HEADER = "gs-bench"
ACTION_TOPICS = (Topic.ALLOW, Topic.BLOCK, Topic.REVIEW)
TENANTS = (("default", 0.70), ("acme", 0.15), ("health-forum", 0.10), ("shop-b", 0.05))
DUPLICATE_SHARE = 0.30
NEAR_SHARE = 0.05
NEAR_MIN_CHARS = 40
MIN_CHARS, MAX_CHARS, MEDIAN_CHARS = 20, 600, 110
# The stand-in must never be the bottleneck: up to 10 batches of 500 at a time (the real
# scorer's 64 x 4 would cap it near 1,000 requests/s on tansu, see `broker_hop`).
STANDIN_BATCH, STANDIN_IN_FLIGHT = 500, 5000
TARGET_RATIO = 0.5
TARGET_TRIAGE_P99_MS = 20.0

# --- corpus ---------------------------------------------------------------------------------

EN_WORDS = (
    "the a my your our this that every some no one two few many people friends kids team "
    "city school work game movie music song album show phone laptop car bike bus train "
    "coffee tea pizza sushi noodles dinner lunch weekend morning night today tomorrow "
    "yesterday week month year really very quite just still already never always maybe "
    "honestly literally totally love hate like want need think know feel see hear watch "
    "read write buy sell send call help find lose win play make take give tell ask try "
    "good bad great terrible awful amazing boring funny weird cheap expensive new old big "
    "small fast slow hot cold happy sad angry tired excited worried sure wrong right "
    "about with without because after before during while until since for from into over "
    "price deal offer free link account password order delivery refund review update "
    "news election policy vote government police doctor hospital medicine vaccine health "
    "weather rain snow sun beach park mall store market street home house room office "
    "teacher student boss neighbour mom dad sister brother cousin grandma dog cat bird "
    "fight argue shout hurt kill attack threat gun knife drugs scam fake spam bot hack "
    "can will would should could must might did does was were is are be been have has"
).split()
EN_NAMES = "Sarah Mike Jessica David Emily Chris Priya Omar Laura Kevin Wei Ana".split()
ZH_WORDS = (
    "我们 你们 他们 今天 明天 昨天 周末 晚上 早上 朋友 家人 孩子 老师 学生 老板 同事 邻居 "
    "妈妈 爸爸 城市 学校 公司 工作 游戏 电影 音乐 手机 电脑 汽车 地铁 咖啡 奶茶 火锅 外卖 "
    "真的 非常 有点 已经 还是 一直 可能 其实 感觉 觉得 知道 喜欢 讨厌 需要 想要 看到 听说 "
    "购买 出售 发送 帮忙 寻找 丢失 赢了 输了 便宜 太贵 新的 旧的 好看 难看 开心 难过 生气 "
    "累了 担心 价格 优惠 免费 链接 账号 密码 订单 快递 退款 评价 更新 新闻 选举 政策 政府 "
    "警察 医生 医院 药品 疫苗 健康 天气 下雨 下雪 海边 公园 商场 市场 街道 房子 办公室 "
    "打架 吵架 伤害 威胁 诈骗 假货 广告 黑客 谣言 投诉 举报 支持 反对 分享 转发 点赞 评论"
).split()
EMOJI = ("😂", "🔥", "👍", "🙏", "😡", "😭", "🎉", "💯", "🤔", "👀", "✨", "💔")
EN_PUNCT = ".!?,;:"
ZH_PUNCT = "，。！？、；"


def last_offsets(records: Records) -> dict[TopicPartition, int]:
    """Offsets the passthrough reference commits after a whole batch: last offset + 1."""
    out: dict[TopicPartition, int] = {}
    for record in records:
        tp = TopicPartition(record.topic, record.partition)
        out[tp] = max(out.get(tp, 0), record.offset + 1)
    return out


@dataclass(frozen=True, slots=True)
class Item:
    text: str
    lang: str
    tenant: str
    kind: str  # "original" | "duplicate" | "near"
    of: str = ""  # a repeat's source: "history" (cached before the run) or "stream"

    @property
    def label(self) -> str:
        return f"{self.kind} of {self.of}" if self.of else self.kind


class Corpus:
    """A seeded, continuing stream of posts; `take(n)` returns the next n.

    `history(n)` makes n originals that count as decided long ago (their verdicts are put in
    the cache and the near-duplicate index before the run, never sent): any post may repeat
    them. A repeat of a post from the stream itself comes at least `gap` posts after it.
    """

    def __init__(self, seed: int, gap: int) -> None:
        self._rng = random.Random(seed)
        self._gap = gap
        self._index = 0
        self._seen: set[str] = set()  # raw texts of originals and normal forms of variants
        self._originals: list[tuple[int, Item]] = []
        self._long: list[tuple[int, Item]] = []  # originals long enough for a variant
        self._viral: list[tuple[int, Item]] = []  # 1% of the originals, half the duplicates

    def history(self, count: int) -> list[Item]:
        return [self._original(-(10**12)) for _ in range(count)]

    def take(self, count: int) -> list[Item]:
        rng = self._rng
        start = self._index
        first = 0 if self._originals else self._gap  # with a history any post may repeat
        eligible = [i for i in range(start, start + count) if i >= first]
        n_dup = round(DUPLICATE_SHARE * count)
        n_near = round(NEAR_SHARE * count)
        chosen = rng.sample(eligible, min(len(eligible), n_dup + n_near))
        duplicates, nears = set(chosen[:n_dup]), set(chosen[n_dup:])
        items: list[Item] = []
        for index in range(start, start + count):
            item: Item | None = None
            if index in duplicates:
                item = self._duplicate(index)
            elif index in nears:
                item = self._near(index)
            if item is None:
                item = self._original(index)
            items.append(item)
        self._index = start + count
        return items

    def _pick(self, pool: list[tuple[int, Item]], index: int) -> tuple[Item, str] | None:
        limit = bisect.bisect_right(pool, index - self._gap, key=lambda entry: entry[0])
        if not limit:
            return None
        at, item = pool[self._rng.randrange(limit)]
        return item, "history" if at < 0 else "stream"

    def _duplicate(self, index: int) -> Item | None:
        pool = self._viral if self._rng.random() < 0.5 else self._originals
        picked = self._pick(pool, index) or self._pick(self._originals, index)
        if picked is None:
            return None
        source, of = picked
        return Item(source.text, source.lang, source.tenant, "duplicate", of)

    def _near(self, index: int) -> Item | None:
        picked = self._pick(self._long, index)
        if picked is None:
            return None
        source, of = picked
        base = normalise(source.text)
        for _ in range(8):
            text = variant(source.text, source.lang, self._rng)
            norm = normalise(text)
            if len(text) >= NEAR_MIN_CHARS and norm != base and norm not in self._seen:
                self._seen.add(norm)
                return Item(text, source.lang, source.tenant, "near", of)
        return None

    def _original(self, index: int) -> Item:
        rng = self._rng
        while True:
            lang = "en" if rng.random() < 0.55 else "zh"
            target = round(rng.lognormvariate(math.log(MEDIAN_CHARS), 0.75))
            target = min(MAX_CHARS, max(MIN_CHARS, target))
            text = english(rng, target) if lang == "en" else chinese(rng, target)
            if text not in self._seen:
                break
        self._seen.add(text)
        tenant = rng.choices([t for t, _ in TENANTS], [w for _, w in TENANTS])[0]
        item = Item(text, lang, tenant, "original")
        self._originals.append((index, item))
        if len(text) >= NEAR_MIN_CHARS:
            self._long.append((index, item))
        if rng.random() < 0.01:
            self._viral.append((index, item))
        return item


def english(rng: random.Random, target: int) -> str:
    sentences: list[str] = []
    length = 0
    while length < target:
        words = rng.choices(EN_WORDS, k=rng.randint(4, 14))
        if rng.random() < 0.2:
            words.insert(rng.randrange(len(words)), rng.choice(EN_NAMES))
        if rng.random() < 0.15:
            words.insert(rng.randrange(len(words)), str(rng.randint(2, 500)))
        sentence = " ".join(words)
        sentence = sentence[0].upper() + sentence[1:] + rng.choice(".!?.")
        if rng.random() < 0.1:
            sentence += " " + rng.choice(EMOJI)
        sentences.append(sentence)
        length += len(sentence) + 1
    text = " ".join(sentences)
    if len(text) > target:
        cut = text.rfind(" ", MIN_CHARS, target + 1)
        text = text[: cut if cut > 0 else target].rstrip(" ,;:") + "."
    return text[:MAX_CHARS]


def chinese(rng: random.Random, target: int) -> str:
    parts: list[str] = []
    length = 0
    while length < target:
        clause = "".join(rng.choices(ZH_WORDS, k=rng.randint(3, 8)))
        if rng.random() < 0.1:
            clause += str(rng.randint(2, 500))
        clause += rng.choice("，，。！？")
        parts.append(clause)
        length += len(clause)
    text = "".join(parts)[:target]
    return text if text[-1] in ZH_PUNCT else text[:-1] + "。"


def variant(text: str, lang: str, rng: random.Random) -> str:
    """A trivial variant: case, punctuation, emoji or whitespace changed (1-2 of them)."""
    ops: list[Callable[[str], str]] = [
        lambda t: _strip_punctuation(t),
        lambda t: t.rstrip(EN_PUNCT + ZH_PUNCT) + rng.choice(("!!!", "???", "！！", "...")),
        lambda t: _insert(t, rng, " " + rng.choice(EMOJI) + " ", words=lang == "en"),
        lambda t: t + " " + "".join(rng.choices(EMOJI, k=rng.randint(1, 3))),
    ]
    if lang == "en":
        ops += [
            lambda t: rng.choice((str.upper, str.lower, str.swapcase, str.title))(t),
            lambda t: _join_two_words(t, rng),
        ]
    else:
        ops += [lambda t: _insert(t, rng, " ", words=False)]
    for op in rng.sample(ops, rng.randint(1, 2)):
        text = op(text)
    return text


def _strip_punctuation(text: str) -> str:
    return "".join(ch for ch in text if ch not in EN_PUNCT + ZH_PUNCT)


def _insert(text: str, rng: random.Random, what: str, *, words: bool) -> str:
    spots = [i for i, ch in enumerate(text) if ch == " "] if words else list(range(1, len(text)))
    if not spots:
        return text + what
    at = rng.choice(spots)
    return text[:at] + what + text[at:]


def _join_two_words(text: str, rng: random.Random) -> str:
    spots = [i for i, ch in enumerate(text) if ch == " "]
    if not spots:
        return text + "!"
    at = rng.choice(spots)
    return text[:at] + text[at + 1 :]


@dataclass(frozen=True, slots=True)
class Sent:
    post_id: str
    key: bytes
    value: bytes
    kind: str  # `Item.label`


async def warm_history(settings: Settings, items: Sequence[Item]) -> None:
    """Put the history's verdicts in the cache and its texts in the near-duplicate index,
    keyed exactly as triage keys them (`triage_record`), as the scorer would have."""
    policies = load_registry(settings.policy.dir)
    model = served_model_id(settings)
    verdicts: dict[VerdictKey, CachedVerdict] = {}
    scopes: dict[str, list[tuple[str, str]]] = {}
    for post in encode(items, "hist"):
        item = triage_record(
            post.value,
            max_text_chars=settings.process.max_text_chars,
            model=model,
            adapter=None,
            policies=policies,
        )
        verdicts[item.verdict_key] = standin_verdict(item.content_key, model)
        if settings.policy.near_duplicates and item.pack.reuse_near_duplicates:
            scopes.setdefault(item.near_scope, []).append((item.content_key, item.text))
    patient = settings.replace(redis={"timeout_ms": 30_000})
    cache = RedisVerdictCache.from_settings(patient)
    near = RedisNearDuplicateIndex.from_settings(patient)
    try:
        keys = list(verdicts)
        for n in range(0, len(keys), 2000):
            await cache.put_many({k: verdicts[k] for k in keys[n : n + 2000]})
        for scope, entries in scopes.items():
            for n in range(0, len(entries), 1000):
                await near.add_many(scope, entries[n : n + 1000])
    finally:
        await cache.close()
        await near.close()


def encode(items: Sequence[Item], prefix: str) -> list[Sent]:
    out: list[Sent] = []
    for n, item in enumerate(items):
        post = new_post(item.text, tenant=item.tenant, lang=item.lang, post_id=f"{prefix}-{n}")
        out.append(Sent(post.post_id, post.post_id.encode(), post.to_json(), item.label))
    return out


# --- measuring helpers ----------------------------------------------------------------------


def percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q / 100 * len(ordered)) - 1))]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Sampler:
    """Peak RSS of one process and CPU seconds of several, per phase, from a thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._watched: dict[str, psutil.Process] = {"bench": psutil.Process()}
        self._rss: psutil.Process | None = None
        self.phase = "start"
        self.peak_rss: dict[str, int] = {}
        self.cpu: dict[str, dict[str, float]] = {}
        self._cpu_at_start: dict[str, float] = {}
        self._started = time.monotonic()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)
        self._thread.start()

    def watch(self, name: str, pid: int, *, rss: bool = False) -> None:
        with contextlib.suppress(psutil.Error), self._lock:
            proc = psutil.Process(pid)
            self._watched[name] = proc
            if rss:
                self._rss = proc

    def _cpu(self) -> dict[str, float]:
        out: dict[str, float] = {}
        for name, proc in self._watched.items():
            with contextlib.suppress(psutil.Error):
                times = proc.cpu_times()
                out[name] = times.user + times.system
        return out

    def begin(self, phase: str) -> None:
        with self._lock:
            self.phase = phase
            self._cpu_at_start = self._cpu()
            self._started = time.monotonic()

    def end(self) -> None:
        with self._lock:
            now = self._cpu()
            spent = {k: v - self._cpu_at_start.get(k, 0.0) for k, v in now.items()}
            spent["wall"] = time.monotonic() - self._started
            self.cpu[self.phase] = spent
            self.phase = "between"

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            with self._lock:
                proc, phase = self._rss, self.phase
            if proc is None:
                continue
            with contextlib.suppress(psutil.Error):
                rss = proc.memory_info().rss
                self.peak_rss[phase] = max(self.peak_rss.get(phase, 0), rss)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=2)


def find_redis_pid(url: str) -> int | None:
    port = redis.Redis.from_url(url).connection_pool.connection_kwargs.get("port", 6379)
    for proc in psutil.process_iter(["name", "cmdline"]):
        with contextlib.suppress(psutil.Error):
            if proc.info["name"] == "redis-server" and str(port) in " ".join(
                proc.info["cmdline"] or ()
            ):
                return int(proc.pid)
    return None


# --- Kafka helpers --------------------------------------------------------------------------


async def produce_all(settings: Settings, topic: str, posts: Sequence[Sent]) -> dict[Any, int]:
    """Send every post and wait for the acks; returns each partition's end offset.

    The ends come from the acknowledgements: tansu's ListOffsets(latest) answers the base
    offset of a partition's last record batch, not its end, so `end_offsets` cannot be used.
    """
    producer = make_producer(settings, client_id="bench-preproduce")
    await producer.start()
    try:
        pending = [await producer.send(topic, p.value, key=p.key) for p in posts]
        acked = await asyncio.gather(*pending)
    finally:
        await producer.stop()
    ends: dict[Any, int] = {}
    for meta in acked:
        tp = TopicPartition(meta.topic, meta.partition)
        ends[tp] = max(ends.get(tp, 0), meta.offset + 1)
    return ends


@contextlib.asynccontextmanager
async def group_less(settings: Settings) -> AsyncIterator[AIOKafkaConsumer]:
    consumer = AIOKafkaConsumer(**client_kwargs(settings), group_id=None)
    await consumer.start()
    try:
        yield consumer
    finally:
        # aiokafka 0.14: stopping a consumer before its committed-offsets task ever ran
        # re-raises that task's CancelledError; one turn of the loop lets it start.
        await asyncio.sleep(0)
        await consumer.stop()


async def partitions(settings: Settings, topics: Sequence[str]) -> list[TopicPartition]:
    async with group_less(settings) as consumer:
        return [
            TopicPartition(t, p)
            for t in topics
            for p in sorted(consumer.partitions_for_topic(t) or ())
        ]


async def wait_for_lag_zero(
    settings: Settings,
    group: str,
    ends: dict[Any, int],
    *,
    timeout_s: float,
    alive: Callable[[], bool] = lambda: True,
    progress: Callable[[int, int], None] | None = None,
) -> None:
    """Poll `group`'s committed offsets (a consumer that never joins the group) until they
    reach `ends`."""
    watcher = AIOKafkaConsumer(**client_kwargs(settings), group_id=group, enable_auto_commit=False)
    await watcher.start()
    total = sum(ends.values())
    deadline = time.monotonic() + timeout_s
    last_report = 0.0
    try:
        while True:
            done = 0
            for tp, end in ends.items():
                done += min(end, await watcher.committed(tp) or 0)
            if done >= total:
                return
            if progress is not None and time.monotonic() - last_report > 5:
                progress(done, total)
                last_report = time.monotonic()
            if not alive():
                raise RuntimeError(f"{group}: process exited with {done}/{total} committed")
            if time.monotonic() > deadline:
                raise TimeoutError(f"{group}: {done}/{total} committed after {timeout_s:.0f}s")
            await asyncio.sleep(0.2)
    finally:
        await watcher.stop()


async def read_back(
    settings: Settings,
    tps: Sequence[TopicPartition],
    on_record: Callable[[ConsumerRecord[bytes, bytes]], None],
    done: Callable[[], bool],
    idle_timeout_s: float = 15,
) -> None:
    """Records of `tps` from the beginning until `done()`; fails after `idle_timeout_s`
    without a new record."""
    consumer = AIOKafkaConsumer(
        **client_kwargs(settings), group_id=None, enable_auto_commit=False, max_poll_records=5000
    )
    await consumer.start()
    try:
        consumer.assign(list(tps))
        await consumer.seek_to_beginning(*tps)
        last = time.monotonic()
        while not done():
            batches = await consumer.getmany(timeout_ms=200)
            for records in batches.values():
                for record in records:
                    on_record(record)
                last = time.monotonic()
            if time.monotonic() - last > idle_timeout_s:
                raise TimeoutError(f"no new output for {idle_timeout_s:.0f}s")
    finally:
        await consumer.stop()


def header(record: ConsumerRecord[bytes, bytes], name: str) -> bytes | None:
    for key, value in record.headers or ():
        if key == name:
            return bytes(value)
    return None


async def wait_assigned(consumer: AIOKafkaConsumer) -> float:
    """The wall-clock moment `consumer` first holds partitions (checked every 5 ms)."""
    while not consumer.assignment():  # noqa: ASYNC110 - no event to wait on
        await asyncio.sleep(0.005)
    return time.time()


# --- passthrough ----------------------------------------------------------------------------


@dataclass
class Rate:
    records: int
    seconds: float

    @property
    def per_s(self) -> float:
        return self.records / self.seconds if self.seconds > 0 else float("nan")


async def passthrough_raw(settings: Settings, source: str, target: str, count: int) -> Rate:
    """Consume → produce each → await acks → commit, one batch at a time."""
    consumer = make_consumer(
        settings,
        group_id=f"{settings.namespace}.bench-passthrough",
        client_id="bench-passthrough",
        max_records=settings.triage.batch_max,
    )
    producer = make_producer(settings, client_id="bench-passthrough")
    await producer.start()
    await consumer.start()
    try:
        consumer.subscribe([source])
        started = await wait_assigned(consumer)
        done = 0
        while done < count:
            batches = await consumer.getmany(
                timeout_ms=settings.process.poll_timeout_ms, max_records=settings.triage.batch_max
            )
            records = [r for part in batches.values() for r in part]
            if not records:
                continue
            pending = [await producer.send(target, r.value, key=r.key) for r in records]
            await asyncio.gather(*pending)
            await consumer.commit(last_offsets(records))
            done += len(records)
        return Rate(done, time.time() - started)
    finally:
        await consumer.stop()
        await producer.stop()


async def passthrough_runtime(settings: Settings, source: str, target: str, count: int) -> Rate:
    """guardstream's BatchLoop with a handler that only forwards each record."""
    consumer = make_consumer(
        settings,
        group_id=f"{settings.namespace}.bench-runtime",
        client_id="bench-runtime",
        max_records=settings.triage.batch_max,
    )
    producer = make_producer(settings, client_id="bench-runtime")
    finished = asyncio.Event()
    done = 0
    ended = 0.0

    async def forward(records: Records) -> None:
        nonlocal done, ended
        pending = [await producer.send(target, r.value, key=r.key) for r in records]
        await asyncio.gather(*pending)
        done += len(records)
        if done >= count:
            ended = time.time()
            finished.set()

    loop = BatchLoop(
        consumer,
        forward,
        LoopConfig(
            name="bench-runtime",
            max_records=settings.triage.batch_max,
            max_in_flight=settings.triage.max_in_flight,
            poll_timeout_ms=settings.process.poll_timeout_ms,
            backoff_max_s=settings.process.retry_backoff_max_s,
            drain_s=settings.process.shutdown_drain_s,
        ),
    )
    await producer.start()
    await consumer.start()
    stop = asyncio.Event()
    try:
        consumer.subscribe([source], listener=loop.listener())
        running = asyncio.create_task(loop.run(stop))
        started = await wait_assigned(consumer)
        await finished.wait()
        stop.set()
        await running
        return Rate(done, ended - started)
    finally:
        await consumer.stop()
        await producer.stop()


# --- the scorer stand-in --------------------------------------------------------------------


def standin_verdict(content_key: str, model: str) -> CachedVerdict:
    """A deterministic verdict per content: 85% safe, 10% unsafe, 5% controversial."""
    bucket = int(content_key[:2], 16)
    cats: tuple[str, ...]
    if bucket < 218:
        label, verdict, cats, confidence = "Safe", Verdict.SAFE, (), 0.97
    elif bucket < 243:
        label, verdict, cats, confidence = "Unsafe", Verdict.UNSAFE, ("Violent",), 0.93
    else:
        label, verdict, cats, confidence = "Controversial", Verdict.CONTROVERSIAL, (), 0.88
    return CachedVerdict(
        verdict=verdict,
        categories=cats,
        confidence=confidence,
        refusal=None,
        reason=model_reason(label, cats, None),
        source=Source.MODEL,
        model=model,
        decided_at=utcnow(),
    )


class StandIn:
    """The scorer stand-in: guardstream's BatchLoop over `score-requests` (batches of up to
    `STANDIN_BATCH`, `STANDIN_IN_FLIGHT` requests in flight); each batch waits `latency_s`,
    then caches its verdicts, indexes the texts for near-duplicates and sends one decision per
    request.

    It runs on its own event loop in a thread of this process, so that its batches do not
    hold up the loop that paces posts and timestamps their outputs (the GIL still switches
    every 5 ms). Its Redis calls get a 5 s deadline instead of the product's 200 ms: a
    dropped cache write would turn later duplicates into misses that are the bench's fault.
    """

    def __init__(self, settings: Settings, latency_s: float) -> None:
        self.settings = settings.replace(redis={"timeout_ms": 5000})
        self.latency_s = latency_s
        self.batches = 0
        self.requests = 0
        self._policies = load_registry(settings.policy.dir)
        self._model = served_model_id(settings)
        self._names = TopicNames(settings.namespace)
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._main, name="scorer-stand-in", daemon=True)

    def start(self, timeout_s: float = 60) -> None:
        """Returns once the stand-in holds the partitions of `score-requests` (blocking)."""
        self._thread.start()
        if not self._ready.wait(timeout_s):
            raise TimeoutError("scorer stand-in did not get its partitions")
        self.check()

    def check(self) -> None:
        """Raise if the stand-in failed."""
        if self._error is not None:
            raise RuntimeError("scorer stand-in failed") from self._error

    def stop(self, timeout_s: float = 30) -> None:
        """Stop and join (blocking)."""
        if self._loop is not None and self._stop is not None and not self._loop.is_closed():
            with contextlib.suppress(RuntimeError):  # its loop already ended
                self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join(timeout_s)
        self.check()

    def _main(self) -> None:
        try:
            asyncio.run(self._serve())
        except BaseException as exc:  # noqa: BLE001 - reported to the main thread
            self._error = exc
        finally:
            self._ready.set()

    async def _serve(self) -> None:
        settings = self.settings
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        async with AsyncExitStack() as stack:
            self._cache = RedisVerdictCache.from_settings(settings)
            stack.push_async_callback(self._cache.close)
            self._near = RedisNearDuplicateIndex.from_settings(settings)
            stack.push_async_callback(self._near.close)
            self._producer = make_producer(settings, client_id="bench-scorer-standin")
            await self._producer.start()
            stack.push_async_callback(self._producer.stop)
            consumer = make_consumer(
                settings,
                # The scorer's own group: triage's scorer watch judges it by these commits.
                group_id=settings.group_id("scorer"),
                client_id="bench-scorer-standin",
                max_records=STANDIN_BATCH,
            )
            loop = BatchLoop(
                consumer,
                self.handle,
                LoopConfig(
                    name="bench-scorer-standin",
                    max_records=STANDIN_BATCH,
                    max_in_flight=STANDIN_IN_FLIGHT,
                    poll_timeout_ms=settings.process.poll_timeout_ms,
                    backoff_max_s=settings.process.retry_backoff_max_s,
                    drain_s=5,
                ),
            )
            await consumer.start()
            stack.push_async_callback(consumer.stop)
            consumer.subscribe([self._names[Topic.SCORE_REQUESTS]], listener=loop.listener())
            running = asyncio.create_task(loop.run(self._stop))
            await wait_assigned(consumer)
            self._ready.set()
            await running

    async def handle(self, records: Records) -> None:
        await asyncio.sleep(self.latency_s)  # the model
        requests = [ScoreRequest.from_json(r.value) for r in records]
        verdicts = {r.content_key: standin_verdict(r.content_key, self._model) for r in requests}
        await self._cache.put_many(
            {
                VerdictKey(
                    r.content_key,
                    r.tenant,
                    self._policies.for_post(r.tenant, r.region).share_model_verdicts,
                ): verdicts[r.content_key]
                for r in requests
            }
        )
        scopes: dict[str, list[tuple[str, str]]] = {}
        for r in requests:
            if r.near_scope is not None:
                scopes.setdefault(r.near_scope, []).append((r.content_key, r.text))
        await asyncio.gather(*(self._near.add_many(s, i) for s, i in scopes.items()))
        pending = []
        for r in requests:
            decision = decide(
                verdicts[r.content_key],
                Origin.MODEL,
                self._policies.for_post(r.tenant, r.region),
                post_id=r.post_id,
                post_event_id=r.post_event_id,
                tenant=r.tenant,
                content_key=r.content_key,
            )
            pending.append(
                await self._producer.send(
                    self._names[ACTION_TOPIC[decision.action]],
                    decision.to_json(),
                    key=r.post_id.encode(),
                    headers=[(BENCH_HEADER, b"scorer-stand-in")],
                )
            )
        await asyncio.gather(*pending)
        self.batches += 1
        self.requests += len(records)


# --- triage process -------------------------------------------------------------------------


@dataclass
class TriageProcess:
    settings: Settings
    log_path: Path
    profile: Path | None
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None

    async def start(self) -> int:
        env = {
            **os.environ,
            "GUARDSTREAM_NAMESPACE": self.settings.namespace,
            "KAFKA_BOOTSTRAP": self.settings.kafka.bootstrap,
            "REDIS_URL": self.settings.redis.url.get_secret_value(),
            "GUARDSTREAM_MODEL": "tiny",
            "GUARDSTREAM_HEALTH_PORT": str(self.port),
        }
        argv = [sys.executable, "-m", "guardstream", "triage"]
        if self.profile is not None:
            argv[1:1] = ["-m", "cProfile", "-o", str(self.profile)]
        with self.log_path.open("ab") as log:
            self.proc = await asyncio.create_subprocess_exec(
                *argv,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    async def ready(self) -> bool:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        except OSError:
            return False
        try:
            writer.write(b"GET /readyz HTTP/1.1\r\nHost: localhost\r\n\r\n")
            await writer.drain()
            status = await asyncio.wait_for(reader.readline(), timeout=1)
        except (OSError, TimeoutError):
            return False
        finally:
            writer.close()
        return b" 200 " in status

    async def wait_ready(self, timeout_s: float = 120) -> float:
        """The wall-clock moment /readyz first answered 200 (partitions assigned)."""
        deadline = time.monotonic() + timeout_s
        while not await self.ready():
            if not self.alive():
                raise RuntimeError(f"triage exited during start-up:\n{self.tail()}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"triage not ready after {timeout_s:.0f}s:\n{self.tail()}")
            await asyncio.sleep(0.01)
        return time.time()

    async def stop(self, grace_s: float = 30) -> None:
        if self.proc is None or self.proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), timeout=grace_s)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.proc.wait()

    def kill_now(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()

    def tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


# --- phases ---------------------------------------------------------------------------------


@dataclass
class TriageOutputs:
    """What triage sent for each post, read back from its output topics."""

    out_ms: dict[str, int] = field(default_factory=dict)  # post id → CreateTime of its output
    outcome: Counter[str] = field(default_factory=Counter)  # miss / cache / near / dlq
    by_kind: Counter[tuple[str, str]] = field(default_factory=Counter)  # (corpus kind, outcome)
    standin_decisions: int = 0
    duplicated_outputs: int = 0


def classify(
    record: ConsumerRecord[bytes, bytes], names: TopicNames
) -> tuple[str, str | None] | None:
    """(outcome, post id) of one output record; None for the stand-in's decisions."""
    if record.topic == names[Topic.DLQ]:
        return "dlq", None
    if header(record, BENCH_HEADER) is not None:
        return None
    data = orjson.loads(record.value or b"{}")
    if record.topic == names[Topic.SCORE_REQUESTS]:
        return "miss", data.get("post_id")
    return ("near" if data.get("matched_content_key") else "cache"), data.get("post_id")


async def throughput_phase(
    settings: Settings,
    triage: TriageProcess,
    posts: Sequence[Sent],
    post_ends: dict[Any, int],
    standin: StandIn,
    sampler: Sampler,
    say: Callable[[str], None],
) -> tuple[Rate, Rate, TriageOutputs]:
    names = TopicNames(settings.namespace)
    pid = await triage.start()
    sampler.watch("triage", pid, rss=True)
    sampler.begin("triage-start")
    started = await triage.wait_ready()
    sampler.end()
    sampler.begin("throughput")
    say(f"triage ready (pid {pid}); waiting for lag 0 on {len(posts):,} posts")
    await wait_for_lag_zero(
        settings,
        settings.group_id("triage"),
        post_ends,
        timeout_s=max(300.0, len(posts) / 100),
        alive=triage.alive,
        progress=lambda done, total: say(f"  triage committed {done:,}/{total:,}"),
    )
    sampler.end()
    say("triage at lag 0; reading its outputs back")
    out_tps = await partitions(
        settings,
        [names[t] for t in (Topic.SCORE_REQUESTS, *ACTION_TOPICS, Topic.DLQ)],
    )
    kinds = {p.post_id: p.kind for p in posts}
    outputs = TriageOutputs()

    def on_record(record: ConsumerRecord[bytes, bytes]) -> None:
        found = classify(record, names)
        if found is None:
            outputs.standin_decisions += 1
            return
        outcome, post_id = found
        outputs.outcome[outcome] += 1
        if post_id is None or post_id not in kinds:
            return
        if post_id in outputs.out_ms:
            outputs.duplicated_outputs += 1
            return
        outputs.out_ms[post_id] = record.timestamp
        outputs.by_kind[(kinds[post_id], outcome)] += 1

    await read_back(settings, out_tps, on_record, lambda: len(outputs.out_ms) >= len(posts))
    misses = outputs.by_kind.total() - sum(
        n for (_, o), n in outputs.by_kind.items() if o != "miss"
    )
    say(f"waiting for the scorer stand-in to answer {misses:,} score requests")
    deadline = time.monotonic() + 300
    while standin.requests < misses:
        standin.check()
        if time.monotonic() > deadline:
            raise TimeoutError(f"scorer stand-in answered {standin.requests}/{misses}")
        await asyncio.sleep(0.2)
    last = max(outputs.out_ms.values()) / 1000
    first = min(outputs.out_ms.values()) / 1000
    return Rate(len(posts), last - started), Rate(len(posts), last - first), outputs


@dataclass
class Latencies:
    rate: float
    posts: int
    # Post sent → CreateTime of its first decision (triage's for a hit, the stand-in's else).
    e2e_ms: list[float] = field(default_factory=list)
    e2e_hit_ms: list[float] = field(default_factory=list)
    e2e_miss_ms: list[float] = field(default_factory=list)
    # Post sent → CreateTime of triage's output (the decision of a hit, a miss's request).
    triage_ms: list[float] = field(default_factory=list)
    triage_hit_ms: list[float] = field(default_factory=list)
    triage_miss_ms: list[float] = field(default_factory=list)
    hop_ms: list[float] = field(default_factory=list)  # post sent → read by a make_consumer()
    outcome: Counter[str] = field(default_factory=Counter)
    missing: int = 0
    send_lag_ms: float = 0.0  # how far the paced producer fell behind its schedule, at most
    loop_lag_ms: list[float] = field(default_factory=list)  # this process's event-loop lag


async def assigned_at_end(consumer: AIOKafkaConsumer, tps: Sequence[TopicPartition]) -> None:
    """Assign `tps` and resolve their positions now, before anything is sent. (tansu's end
    offsets lag a little, so a few older records are read too; they are not ours and ignored.)
    """
    consumer.assign(list(tps))
    await consumer.seek_to_end(*tps)
    for tp in tps:
        await consumer.position(tp)


async def latency_phase(
    settings: Settings,
    posts: Sequence[Sent],
    rate: float,
    say: Callable[[str], None],
) -> Latencies:
    names = TopicNames(settings.namespace)
    result = Latencies(rate=rate, posts=len(posts))
    sent_at: dict[str, float] = {}
    triage_at: dict[str, tuple[float, str]] = {}  # output's CreateTime (s), outcome
    decided_at: dict[str, float] = {}  # first decision's CreateTime (s)
    async with AsyncExitStack() as stack:
        # Collects triage's and the stand-in's outputs. Their CreateTime is what counts, not
        # when this reader gets them (on tansu that adds a share of its fetch wait, see
        # `broker_hop`), so it keeps aiokafka's default wait and costs the broker little.
        watcher = AIOKafkaConsumer(
            **client_kwargs(settings),
            group_id=None,
            enable_auto_commit=False,
            max_poll_records=2000,
        )
        # Reads the posts themselves, configured exactly as triage's consumer.
        hop = make_consumer(
            settings, group_id=None, client_id="bench-hop", max_records=settings.triage.batch_max
        )
        producer = make_producer(settings, client_id="bench-paced")
        for client in (watcher, hop, producer):
            await client.start()
            stack.push_async_callback(client.stop)
        await assigned_at_end(
            watcher,
            await partitions(settings, [names[t] for t in (Topic.SCORE_REQUESTS, *ACTION_TOPICS)]),
        )
        await assigned_at_end(hop, await partitions(settings, [names[Topic.POSTS]]))

        async def broker_hop() -> None:
            """Post send → read by a consumer configured as triage's: the broker's share."""
            while len(result.hop_ms) < len(posts):
                batches = await hop.getmany(timeout_ms=100)
                now = time.time()
                for records in batches.values():
                    for record in records:
                        sent_time = sent_at.get((record.key or b"").decode())
                        if sent_time is not None:
                            result.hop_ms.append((now - sent_time) * 1000)

        async def watch() -> None:
            while len(decided_at) < len(posts) or len(triage_at) < len(posts):
                batches = await watcher.getmany(timeout_ms=100)
                for records in batches.values():
                    for record in records:
                        created = record.timestamp / 1000
                        found = classify(record, names)
                        if found is None:  # the stand-in's decision
                            post_id = orjson.loads(record.value or b"{}").get("post_id")
                            if post_id in sent_at:
                                decided_at.setdefault(post_id, created)
                            continue
                        outcome, post_id = found
                        if post_id not in sent_at or post_id in triage_at:
                            continue
                        triage_at[post_id] = (created, outcome)
                        if outcome != "miss":
                            decided_at.setdefault(post_id, created)

        async def loop_lag() -> None:
            """How late a 10 ms sleep wakes up: this process's share of the measurements."""
            while True:
                before = time.monotonic()
                await asyncio.sleep(0.01)
                result.loop_lag_ms.append((time.monotonic() - before - 0.01) * 1000)

        lagging = asyncio.create_task(loop_lag())
        stack.callback(lagging.cancel)
        readers = asyncio.gather(watch(), broker_hop())
        topic = names[Topic.POSTS]
        pending = []
        begin = time.monotonic() + 0.05
        count = 0
        while count < len(posts):
            due = min(len(posts), int((time.monotonic() - begin) * rate) + 1)
            if due > count + 1:
                result.send_lag_ms = max(result.send_lag_ms, (due - count - 1) / rate * 1000)
            while count < due:
                post = posts[count]
                sent_at[post.post_id] = time.time()
                pending.append(await producer.send(topic, post.value, key=post.key))
                count += 1
            await asyncio.sleep(0.002)
        await asyncio.gather(*pending)
        say(f"  sent {count:,} posts; waiting for their decisions")
        try:
            await asyncio.wait_for(readers, timeout=60)
        except TimeoutError:
            say("  some decisions did not arrive within 60 s")

    for post in posts:
        sent = sent_at.get(post.post_id)
        out = triage_at.get(post.post_id)
        decided = decided_at.get(post.post_id)
        if sent is None or out is None or decided is None:
            result.missing += 1
            continue
        produced, outcome = out
        hit = outcome != "miss"
        result.outcome[outcome] += 1
        e2e = (decided - sent) * 1000
        tri = (produced - sent) * 1000
        result.e2e_ms.append(e2e)
        (result.e2e_hit_ms if hit else result.e2e_miss_ms).append(e2e)
        result.triage_ms.append(tri)
        (result.triage_hit_ms if hit else result.triage_miss_ms).append(tri)
    return result


# --- profile --------------------------------------------------------------------------------


def profile_summary(path: Path, top: int = 15) -> str:
    """Where the profiled triage process spent its time: busy vs waiting in epoll, the
    functions with the most own time, and guardstream's functions by cumulative time
    (reliable for plain functions; coroutines count only their running slices)."""
    stats: dict[tuple[str, int, str], tuple[int, int, float, float, object]]
    stats = pstats.Stats(str(path)).stats  # type: ignore[attr-defined]
    total = sum(entry[2] for entry in stats.values())
    waiting = {key for key in stats if "poll" in key[2] and "epoll" in key[2]}
    idle = sum(stats[key][2] for key in waiting)
    busy = max(total - idle, 1e-9)

    def name(key: tuple[str, int, str]) -> str:
        return f"{Path(key[0]).name}:{key[1]}({key[2]})"

    lines = [
        f"  profiled {total:.1f}s: waiting in epoll {idle:.1f}s, busy {busy:.1f}s",
        f"  own time (top {top})             seconds  of busy      calls",
    ]
    by_own = sorted(stats.items(), key=lambda kv: kv[1][2], reverse=True)
    for key, (_, calls, own, _, _) in [kv for kv in by_own if kv[0] not in waiting][:top]:
        lines.append(f"    {name(key):<48.48} {own:>7.2f} {own / busy:>7.0%} {calls:>10,}")
    lines.append(f"  guardstream, cumulative (top {top})")
    ours = [kv for kv in stats.items() if f"{os.sep}guardstream{os.sep}" in kv[0][0]]
    for key, (_, calls, _, cum, _) in sorted(ours, key=lambda kv: kv[1][3], reverse=True)[:top]:
        lines.append(f"    {name(key):<48.48} {cum:>7.2f} {cum / busy:>7.0%} {calls:>10,}")
    return "\n".join(lines)


# --- the run --------------------------------------------------------------------------------


@dataclass
class Report:
    posts: int
    raw: Rate
    runtime: Rate
    triage: Rate
    triage_from_first: Rate
    outputs: TriageOutputs
    latency: Latencies
    peak_rss: dict[str, int]
    cpu: dict[str, dict[str, float]]
    scorer_latency_ms: float
    standin: StandIn
    preproduce_s: float
    redis_incidents: Counter[str]
    pace: str = "half the triage throughput"  # how the latency run's rate was chosen


async def run_bench(
    args: argparse.Namespace,
    settings: Settings,
    triage: TriageProcess,
    sampler: Sampler,
    say: Callable[[str], None],
) -> Report:
    names = TopicNames(settings.namespace)
    target = Settings(
        namespace=f"{settings.namespace}-pt", kafka={"bootstrap": settings.kafka.bootstrap}
    )
    report_topics = await ensure_topics(settings)
    await ensure_topics(target, [Topic.POSTS])
    if report_topics.mismatched:
        raise RuntimeError(f"topics with unexpected partition counts: {report_topics.mismatched}")

    gap = min(10_000, args.posts // 5)
    corpus = Corpus(args.seed, gap)
    t0 = time.monotonic()
    history = corpus.history(min(20_000, args.posts // 5))
    await warm_history(settings, history)
    posts = encode(corpus.take(args.posts), "tp")
    say(
        f"corpus: {len(posts):,} posts, history of {len(history):,} decided earlier "
        f"(cache and near-duplicate index warmed), gap {gap:,}: {time.monotonic() - t0:.1f}s"
    )

    t0 = time.monotonic()
    post_ends = await produce_all(settings, names[Topic.POSTS], posts)
    preproduce_s = time.monotonic() - t0
    say(f"pre-produced in {preproduce_s:.1f}s ({len(posts) / preproduce_s:,.0f} msgs/s)")

    sampler.begin("passthrough")
    raw = await passthrough_raw(
        settings, names[Topic.POSTS], TopicNames(target.namespace)[Topic.POSTS], len(posts)
    )
    sampler.end()
    say(f"passthrough (raw aiokafka): {raw.per_s:,.0f} msgs/s")
    sampler.begin("passthrough-runtime")
    runtime = await passthrough_runtime(
        settings, names[Topic.POSTS], TopicNames(target.namespace)[Topic.POSTS], len(posts)
    )
    sampler.end()
    say(f"passthrough (guardstream BatchLoop): {runtime.per_s:,.0f} msgs/s")

    standin = StandIn(settings, args.scorer_latency_ms / 1000)
    try:
        await asyncio.to_thread(standin.start)
        tri, tri_first, outputs = await throughput_phase(
            settings, triage, posts, post_ends, standin, sampler, say
        )
        say(f"triage: {tri.per_s:,.0f} msgs/s")
        rate = args.latency_rate or max(1.0, tri.per_s / 2)
        count = max(200, round(rate * args.latency_seconds))
        latency_posts = encode(corpus.take(count), "lat")
        say(f"latency: {count:,} posts at {rate:,.0f} msgs/s ({_pace(args)})")
        sampler.begin("latency")
        lat = await latency_phase(settings, latency_posts, rate, say)
        sampler.end()
    finally:
        try:
            await asyncio.to_thread(standin.stop)
        finally:
            await triage.stop()

    return Report(
        posts=len(posts),
        raw=raw,
        runtime=runtime,
        triage=tri,
        triage_from_first=tri_first,
        outputs=outputs,
        latency=lat,
        peak_rss=dict(sampler.peak_rss),
        cpu=dict(sampler.cpu),
        scorer_latency_ms=args.scorer_latency_ms,
        pace=_pace(args),
        standin=standin,
        preproduce_s=preproduce_s,
        redis_incidents=redis_incidents(triage.tail(10**9)),
    )


def render(report: Report, wall_s: float) -> tuple[str, dict[str, Any]]:
    lat = report.latency
    peak_mb = max(report.peak_rss.values(), default=0) / 2**20
    ratio = report.triage.per_s / report.raw.per_s
    tri_p99 = percentile(lat.triage_ms, 99)
    tri_cpu = report.cpu.get("throughput", {}).get("triage", float("nan"))
    tri_wall = report.cpu.get("throughput", {}).get("wall", float("nan"))
    cpu_us = tri_cpu / report.posts * 1e6
    o = report.outputs
    kinds = Counter(kind for kind, _ in o.by_kind.elements())
    lines = [
        "",
        f"guardstream pipeline benchmark - {report.posts:,} posts, {os.cpu_count()} CPUs, "
        f"wall {wall_s:.0f}s",
        f"SCORER: STAND-IN ({report.scorer_latency_ms:g} ms per batch, no model) - "
        "triage, broker and Redis are real",
        "",
        "throughput                                   msgs/s    vs raw passthrough",
        f"  passthrough, raw aiokafka (1 batch at a time) {report.raw.per_s:>9,.0f}     1.00",
        f"  passthrough, guardstream BatchLoop         {report.runtime.per_s:>9,.0f}"
        f"     {report.runtime.per_s / report.raw.per_s:.2f}",
        f"  triage (ready → last output)               {report.triage.per_s:>9,.0f}"
        f"     {ratio:.2f}   target ≥ {TARGET_RATIO}: "
        f"{'met' if ratio >= TARGET_RATIO else 'NOT met'}",
        f"  triage (first → last output; for reference) {report.triage_from_first.per_s:>8,.0f}",
        f"  triage CPU {cpu_us:,.0f} µs/post ({report.posts / max(tri_cpu, 1e-9):,.0f} posts per "
        f"CPU-second; it kept {tri_cpu / max(tri_wall, 1e-9):.0%} of a core busy)",
        "",
        "triage outcomes (throughput phase)          expected   miss  exact  near   dlq",
    ]
    for kind in sorted(kinds, key=lambda k: (k != "original", k)):
        lines.append(
            f"  {kind:<42}{kinds[kind]:>8,} "
            + " ".join(f"{o.by_kind[(kind, out)]:>6,}" for out in ("miss", "cache", "near", "dlq"))
        )
    lines += [
        f"  records on outputs: {dict(o.outcome)}; stand-in decisions {o.standin_decisions:,}; "
        f"repeated outputs seen {o.duplicated_outputs}",
        "  (an original can hit: a later repeat of it on another partition was triaged first)",
        "",
        f"latency at {lat.rate:,.0f} msgs/s, {report.pace} ({lat.posts:,} posts; "
        f"{lat.missing} without a decision; producer behind schedule by ≤ "
        f"{lat.send_lag_ms:.0f} ms; this process's event loop late by p99 "
        f"{percentile(lat.loop_lag_ms, 99):.0f} / max {max(lat.loop_lag_ms, default=0):.0f} ms)",
        "  from the post's send to the CreateTime of the output record; a downstream reader",
        "  adds one consumer hop (last row: on tansu mostly the fetch wait, see the docstring)",
        "                                         n      p50      p90      p99      max  (ms)",
    ]

    def row(name: str, values: Sequence[float]) -> str:
        return (
            f"  {name:<34}{len(values):>7,} "
            + " ".join(f"{percentile(values, q):>8.1f}" for q in (50, 90, 99))
            + f" {max(values, default=float('nan')):>8.1f}"
        )

    lines += [
        row("end to end → decision, all", lat.e2e_ms),
        row("end to end, exact/near hits", lat.e2e_hit_ms),
        row("end to end, misses (via stand-in)", lat.e2e_miss_ms),
        row("triage-added, all", lat.triage_ms),
        row("triage-added, hits (→ decision)", lat.triage_hit_ms),
        row("triage-added, misses (→ request)", lat.triage_miss_ms),
        row("broker hop (send → read, no work)", lat.hop_ms),
        f"  triage-added p99 target ≤ {TARGET_TRIAGE_P99_MS:g} ms: "
        f"{'met' if tri_p99 <= TARGET_TRIAGE_P99_MS else 'NOT met'}",
        "",
        "triage Redis calls past their 200 ms deadline (fail-open → miss), incidents: "
        + (", ".join(f"{k} {v}" for k, v in sorted(report.redis_incidents.items())) or "none"),
        "",
        "triage peak RSS (MB): "
        + ", ".join(f"{phase} {rss / 2**20:.0f}" for phase, rss in report.peak_rss.items()),
        "",
        "CPU seconds per phase            wall  triage  broker   redis   bench (this process:",
        "                                                                  readers, stand-in)",
    ]
    for phase, spent in report.cpu.items():
        lines.append(
            f"  {phase:<28}{spent.get('wall', 0):>7.1f}"
            + "".join(
                f"{spent[p]:>8.1f}" if p in spent else f"{'-':>8}"
                for p in ("triage", "broker", "redis")
            )
            + f"{spent.get('bench', 0):>8.1f}"
        )
    summary: dict[str, Any] = {
        "bench": "pipeline",
        "posts": report.posts,
        # Everything here shares the machine: a load above its cores inflates CPU per post.
        "load_1m_at_end": round(os.getloadavg()[0], 2),
        "passthrough_msgs_per_s": round(report.raw.per_s, 1),
        "passthrough_batchloop_msgs_per_s": round(report.runtime.per_s, 1),
        "triage_msgs_per_s": round(report.triage.per_s, 1),
        "ratio": round(ratio, 3),
        "triage_cpu_us_per_post": round(cpu_us, 1),
        "latency_rate_msgs_per_s": round(lat.rate, 1),
        "latency_posts": lat.posts,
        "p50_ms": round(percentile(lat.e2e_ms, 50), 2),
        "p99_ms": round(percentile(lat.e2e_ms, 99), 2),
        "triage_added_p50_ms": round(percentile(lat.triage_ms, 50), 2),
        "triage_added_p99_ms": round(tri_p99, 2),
        "triage_added_p99_hit_ms": round(percentile(lat.triage_hit_ms, 99), 2),
        "triage_added_p99_miss_ms": round(percentile(lat.triage_miss_ms, 99), 2),
        "broker_hop_p50_ms": round(percentile(lat.hop_ms, 50), 2),
        "broker_hop_p99_ms": round(percentile(lat.hop_ms, 99), 2),
        "peak_rss_mb": round(peak_mb, 1),
        "scorer": "stand-in",
        "scorer_latency_ms": report.scorer_latency_ms,
        "exact_hits": o.outcome["cache"],
        "near_hits": o.outcome["near"],
        "misses": o.outcome["miss"],
        "ratio_target_met": ratio >= TARGET_RATIO,
        "triage_p99_target_met": tri_p99 <= TARGET_TRIAGE_P99_MS,
        "triage_redis_deadline_incidents": sum(report.redis_incidents.values()),
        "cpus": os.cpu_count(),
        "wall_s": round(wall_s, 1),
    }
    return "\n".join(lines), summary


@contextlib.contextmanager
def broker(workdir: Path, say: Callable[[str], None]) -> Iterator[tuple[str, int | None]]:
    """`KAFKA_BOOTSTRAP`, or a memory-only tansu on a free port (stopped on exit)."""
    if os.environ.get("KAFKA_BOOTSTRAP"):
        say(f"broker: {os.environ['KAFKA_BOOTSTRAP']} (KAFKA_BOOTSTRAP)")
        yield os.environ["KAFKA_BOOTSTRAP"], None
        return
    port = free_port()
    with (workdir / "tansu.log").open("wb") as log:
        proc = subprocess.Popen(
            tansu_command(port),
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 30
        while True:
            with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 0.2):
                break
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("tansu did not start: " + (workdir / "tansu.log").read_text())
            time.sleep(0.05)
        say(f"broker: tansu (pid {proc.pid}) at 127.0.0.1:{port}")
        yield f"127.0.0.1:{port}", proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def redis_incidents(log: str) -> Counter[str]:
    """Per store, how often triage's Redis calls began missing their deadline (logged once
    per incident; each incident turns one or more lookups into misses)."""
    found: Counter[str] = Counter()
    for line in log.splitlines():
        if '"redis unavailable' in line:
            with contextlib.suppress(orjson.JSONDecodeError):
                found[str(orjson.loads(line).get("store"))] += 1
    return found


def delete_keys(url: str, namespace: str) -> int:
    client = redis.Redis.from_url(url)
    deleted = 0
    try:
        batch: list[bytes] = []
        for key in client.scan_iter(match=f"gs:{namespace}:*", count=2000):
            batch.append(key)
            if len(batch) >= 2000:
                deleted += int(client.unlink(*batch))
                batch.clear()
        if batch:
            deleted += int(client.unlink(*batch))
    finally:
        client.close()
    return deleted


def _raise_on_sigterm(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def _pace(args: argparse.Namespace) -> str:
    return "set by --latency-rate" if args.latency_rate else "half the triage throughput"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--posts", type=int, default=100_000, help="posts in the backlog")
    parser.add_argument("--scorer-latency-ms", type=float, default=20.0)
    parser.add_argument(
        "--latency-seconds", type=float, default=20.0, help="length of the paced latency run"
    )
    parser.add_argument(
        "--latency-rate",
        type=float,
        help="pace the latency run at this many posts/s instead of half the measured maximum "
        "(to compare two builds at the same load)",
    )
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--profile", type=Path, help="run triage under cProfile, write here")
    parser.add_argument("--keep-logs", action="store_true", help="keep the logs directory")
    args = parser.parse_args(argv)
    if args.posts < 100:
        parser.error("--posts: at least 100")

    began = time.monotonic()
    say: Callable[[str], None] = lambda line: print(line, file=sys.stderr, flush=True)  # noqa: E731
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")
    redis.Redis.from_url(redis_url, socket_timeout=2).ping()
    namespace = f"bench{uuid.uuid4().hex[:8]}"
    workdir = Path(tempfile.mkdtemp(prefix="gs-bench-"))
    sampler = Sampler()
    failed = True
    triage: TriageProcess | None = None
    try:
        with broker(workdir, say) as (bootstrap, broker_pid):
            if broker_pid is not None:
                sampler.watch("broker", broker_pid)
            redis_pid = find_redis_pid(redis_url)
            if redis_pid is not None:
                sampler.watch("redis", redis_pid)
            settings = Settings(
                namespace=namespace,
                kafka={"bootstrap": bootstrap},
                redis={"url": redis_url},
                model={"name": "tiny"},
            )
            say(f"namespace {namespace}; logs in {workdir}")
            triage = TriageProcess(settings, workdir / "triage.log", args.profile)
            try:
                report = asyncio.run(run_bench(args, settings, triage, sampler, say))
            finally:
                triage.kill_now()
        table, summary = render(report, time.monotonic() - began)
        print(table)
        if args.profile is not None and args.profile.exists():
            print(f"\ntriage under cProfile ({args.profile}; figures above are inflated by it):")
            print(profile_summary(args.profile))
        print(orjson.dumps(summary).decode(), flush=True)
        failed = False
        return 0
    finally:
        sampler.close()
        with contextlib.suppress(redis.RedisError):
            say(f"deleted {delete_keys(redis_url, namespace):,} redis keys gs:{namespace}:*")
        if failed and triage is not None:
            say(f"FAILED; triage log tail:\n{triage.tail()}")
        if failed or args.keep_logs:
            say(f"logs kept in {workdir}")
        else:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
