"""How well near-duplicate matching tells trivial variants from distinct posts.

Builds a seeded corpus of distinct English and Chinese posts (20-400 characters by default)
from sentence templates and word lists. Half the posts come in families of hard negatives that
differ from each other in one slot, a key word or a number ("I will meet you at the park at 5"
/ "I will hurt you at the park at 5"). Every post gets one trivial variant of each kind seen in
spam waves (one or two typos, case, punctuation, emoji, an appended link, spacing, two words
swapped, zero-width characters, a mix), normalised as triage normalises; variants equal to
their post after that are the verdict cache's and are left out. Matching is the index's rule
computed without Redis: equal digits, both sides at least `min_chars` (`signal_length`), and
`hamming(simhash64(a), simhash64(b))` at most the threshold.

Per threshold 0-8: recall (a variant's own post is within the threshold and strictly nearer
than any other post), the false-match rate (share of queries - every distinct post asking
about all the others, every variant asking about all posts but its own - that have any other
post within the threshold) and the hard-negative rate (share of sibling pairs within it).
`pairs_checked` counts the (query, post) pairs the rule decided about. The last line is one
JSON object for `--threshold`/`--min-chars` (the index's defaults unless given).

    .venv/bin/python bench/neardup.py [--posts 2000] [--seed 7] [--threshold 0]
        [--min-chars 24] [--min-length 20] [--max-length 400]
"""

from __future__ import annotations

import argparse
import itertools
import random
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import orjson

from guardstream.contracts.text import normalise
from guardstream.verdict.neardup import (
    DEFAULT_MIN_CHARS,
    DEFAULT_THRESHOLD,
    digits,
    fingerprints,
    hamming,
    signal,
    signal_length,
    simhash64,
)

# --- vocabulary: slot name -> interchangeable values (swapping one makes a hard negative) ---

EN_SLOTS: dict[str, list[str]] = {
    "verb": [
        "meet",
        "hurt",
        "kill",
        "hug",
        "visit",
        "call",
        "find",
        "follow",
        "help",
        "see",
        "punch",
        "thank",
        "teach",
        "stab",
        "pick up",
        "drive",
    ],
    "place": [
        "park",
        "school",
        "mall",
        "library",
        "station",
        "gym",
        "beach",
        "office",
        "church",
        "stadium",
        "hospital",
        "bar",
        "cafe",
        "bridge",
    ],
    "hour": [str(h) for h in range(1, 13)],
    "item": [
        "concert tickets",
        "a used bike",
        "fresh strawberries",
        "a gaming laptop",
        "vintage records",
        "baby formula",
        "a puppy",
        "cheap insulin",
        "a handgun",
        "weed gummies",
        "fake IDs",
        "a graphics card",
        "running shoes",
        "textbooks",
    ],
    "product": [
        "iPhone",
        "PlayStation",
        "Kindle",
        "air fryer",
        "Tesla",
        "gift card",
        "Rolex",
        "laptop",
        "camera",
        "e-bike",
        "sofa",
        "vacuum",
    ],
    "store": ["Walmart", "Target", "Costco", "Amazon", "Best Buy", "our shop", "eBay"],
    "pct": ["10", "20", "30", "40", "50", "60", "70", "80", "90"],
    "price": ["19", "25", "49", "99", "120", "250", "499", "999", "1500"],
    "count": ["2", "3", "5", "10", "20", "50", "100", "500"],
    "city": [
        "Boston",
        "Denver",
        "Austin",
        "Seattle",
        "Chicago",
        "Miami",
        "Portland",
        "Dallas",
        "Atlanta",
        "Phoenix",
    ],
    "name": [
        "Sarah",
        "Mike",
        "Jessica",
        "David",
        "Emily",
        "Chris",
        "Ashley",
        "Kevin",
        "Laura",
        "Tom",
        "Priya",
        "Omar",
    ],
    "group": [
        "women",
        "immigrants",
        "teachers",
        "gamers",
        "nurses",
        "muslims",
        "christians",
        "vegans",
        "boomers",
        "students",
        "cops",
        "gay people",
    ],
    "adj": [
        "amazing",
        "terrible",
        "hilarious",
        "boring",
        "disgusting",
        "beautiful",
        "stupid",
        "brilliant",
        "weird",
        "awful",
        "perfect",
        "pathetic",
    ],
    "team": ["Lakers", "Celtics", "Yankees", "Cowboys", "Eagles", "Warriors", "Bulls"],
    "relative": ["mom", "dad", "sister", "brother", "cousin", "aunt", "grandma", "roommate"],
    "feeling": ["love", "hate", "miss", "respect", "trust", "fear", "admire", "envy"],
    "food": ["pizza", "tacos", "sushi", "ramen", "burgers", "salad", "curry", "pasta"],
    "animal": ["dog", "cat", "parrot", "hamster", "horse", "rabbit", "snake"],
    "action": ["burn", "wash", "paint", "sell", "fix", "steal", "clean", "trash", "borrow"],
}

EN_TEMPLATES = [
    "I will {verb} you at the {place} at {hour}.",
    "Meet me at the {place} tomorrow at {hour} and bring {item}.",
    "Get {pct}% off every {product} today only at {store}!",
    "My {relative} just bought a {product} for ${price} and says it is {adj}.",
    "Does anyone know where to buy {item} in {city}?",
    "{name} is the most {adj} person I have ever worked with.",
    "Honestly {group} are {adj} and everyone knows it.",
    "Free {product} giveaway! Follow and DM me, {count} winners picked tonight.",
    "The {team} game last night was {adj}, we lost by {count} points.",
    "I {feeling} my {relative} so much, thank you for everything.",
    "Selling {item}, ${price} or best offer, pickup in {city} only.",
    "Going to {verb} {name} after school, who is coming?",
    "We had {food} at the {place} again, it was {adj}.",
    "Can someone help me {action} my {relative}'s {product} this weekend?",
    "Lost my {animal} near the {place} in {city}, please call if you see it.",
    "Why do {group} always act like this?",
    "Click here to claim your {product} before {hour} pm!",
    "{name} said {group} should not be allowed to vote.",
    "Just watched the {team} win, {adj} night!",
    "I am going to {action} your {product} if you do not pay me back.",
    "Where can I get {food} in {city} after {hour}?",
    "The {place} near my house has {count} new security cameras now.",
    "Does the {product} come with a warranty? Asking for my {relative}.",
    "DM me for {item}, discreet shipping to {city}.",
    "Honestly the new {product} update is {adj}.",
    "I {feeling} {group}.",
    "{name} you are {adj}.",
    "Remember to feed the {animal} at {hour}.",
    "Our {relative} will {verb} the kids at the {place}.",
    "Earn ${price} a day working from home, no experience needed, reply {count} to start.",
]

ZH_SLOTS: dict[str, list[str]] = {
    "verb": ["见", "打", "杀", "找", "帮", "约", "骂", "抱", "接", "送", "跟踪", "感谢"],
    "place": [
        "公园",
        "学校",
        "商场",
        "图书馆",
        "地铁站",
        "健身房",
        "海边",
        "办公室",
        "医院",
        "网吧",
        "咖啡馆",
        "体育馆",
    ],
    "hour": ["1", "2", "3", "4", "5", "6", "7", "8", "9", "10", "11", "12"],
    "item": [
        "演唱会门票",
        "二手自行车",
        "新鲜草莓",
        "游戏本",
        "黑胶唱片",
        "婴儿奶粉",
        "小狗",
        "减肥药",
        "仿真枪",
        "电子烟",
        "假证件",
        "显卡",
        "跑鞋",
        "教材",
    ],
    "product": [
        "手机",
        "游戏机",
        "电子书",
        "空气炸锅",
        "电动车",
        "购物卡",
        "名表",
        "笔记本电脑",
        "相机",
        "沙发",
        "扫地机",
    ],
    "store": ["京东", "淘宝", "拼多多", "天猫", "我们店", "超市"],
    "pct": ["1", "2", "3", "5", "6", "7", "8", "9"],
    "price": ["9", "19", "29", "99", "199", "399", "888", "1999"],
    "count": ["2", "3", "5", "10", "20", "50", "100"],
    "city": ["北京", "上海", "广州", "深圳", "成都", "杭州", "武汉", "西安", "南京", "重庆"],
    "name": ["小明", "小红", "王伟", "李娜", "张磊", "刘洋", "陈静", "杨帆", "赵敏", "周杰"],
    "group": [
        "女生",
        "外地人",
        "老师",
        "程序员",
        "护士",
        "农民工",
        "东北人",
        "河南人",
        "学生",
        "警察",
        "老人",
    ],
    "adj": [
        "厉害",
        "恶心",
        "好笑",
        "无聊",
        "漂亮",
        "愚蠢",
        "聪明",
        "奇怪",
        "可怕",
        "完美",
        "可怜",
        "垃圾",
    ],
    "team": ["国安", "申花", "恒大", "泰山", "海港", "蓉城"],
    "relative": ["妈妈", "爸爸", "姐姐", "哥哥", "表弟", "阿姨", "奶奶", "室友"],
    "feeling": ["爱", "恨", "想", "尊重", "相信", "害怕", "佩服", "讨厌"],
    "food": ["火锅", "烧烤", "寿司", "拉面", "汉堡", "沙拉", "麻辣烫", "饺子"],
    "animal": ["狗", "猫", "鹦鹉", "仓鼠", "兔子", "乌龟"],
    "action": ["烧掉", "洗", "卖掉", "修好", "偷走", "砸了", "扔掉", "借走"],
}

ZH_TEMPLATES = [
    "我明天{hour}点在{place}{verb}你。",
    "明天{hour}点{place}门口见，记得带{item}。",
    "今天{store}的{product}打{pct}折，手慢无！",
    "我{relative}花了{price}块买了个{product}，说特别{adj}。",
    "有人知道{city}哪里能买到{item}吗？",
    "{name}是我见过最{adj}的人。",
    "说实话{group}都很{adj}，大家心里都清楚。",
    "免费送{product}！关注私信我，今晚抽{count}个人。",
    "昨晚{team}的比赛太{adj}了，输了{count}分。",
    "我好{feeling}我{relative}，谢谢你为我做的一切。",
    "出{item}，{price}元可小刀，仅限{city}自提。",
    "放学去{verb}{name}，谁一起？",
    "又在{place}吃了{food}，味道{adj}。",
    "谁能帮我周末把我{relative}的{product}{action}？",
    "在{city}{place}附近丢了一只{animal}，看到请联系我。",
    "为什么{group}总是这样？",
    "点击链接领取{product}，{hour}点前有效！",
    "{name}说{group}就不该有投票权。",
    "刚看完{team}赢球，今晚太{adj}了！",
    "你再不还钱我就把你的{product}{action}。",
    "{city}晚上{hour}点以后哪里还能吃{food}？",
    "我家附近的{place}新装了{count}个摄像头。",
    "这个{product}有保修吗？帮我{relative}问的。",
    "需要{item}的私聊，{city}包邮。",
    "新版{product}的更新真的很{adj}。",
    "我{feeling}{group}。",
    "{name}你真{adj}。",
    "记得{hour}点喂{animal}。",
    "我{relative}会去{place}{verb}孩子们。",
    "在家兼职日赚{price}元，无需经验，回复{count}了解详情。",
]

EMOJI = ["😂", "🔥", "💯", "🙏", "😍", "👉", "🎉", "❤️", "✅", "😡", "👀", "🤣", "💰", "⚠️"]
ZERO_WIDTH = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff"]
PUNCT = ["!", "!!", "!!!", "?", "...", ",", ".", " -", "~", "。", "！", "，"]
ZH_FILLER = "的一是在不了有和人这中大为上个国我以要他时来用们生到作地于出就分对成会可主发年动同工也能下过子说产种面而方后多定行学法所民得经十三之进着等部度家电力里如水化高自二理起小物现实加量都两体制机当使点从业本去把性好应开它合还因由其些然前外天政四日那社义事平形相全表间样与关各重新线内数正心反你明看原又么利比或但质气第向道命此变条只没结解问意建月公无系军很情者最立代想已通并提直题党程展五果料象员革位入常文总次品式活设及管特件长求老头基资边流路级少图山统接知较将组见计别她手角期根论运农指几九区强放决西被干做必战先回则任取据处队南给色光门即保治北造百规热领七海口东导器压志世金增争济阶油思术极交受联什认六共权收证改清己美再采转更单风切打白教速花带安场身车例真务具万每目至达走积示议声报斗完类八离华名确才科张信马节话米整空元况今集温传土许步群广石记需段研界拉林律叫且究观越织装影算低持音众书布复容儿须际商非验连断深难近矿千周委素技备半办青省列习响约支般史感劳便团往酸历市克何除消构府称太准精值号率族维划选标写存候毛亲快效斯院查江型眼王按格养易置派层片始却专状育厂京识适属圆包火住调满县局照参红细引听该铁价严"  # noqa: E501


@dataclass(frozen=True)
class Sentence:
    lang: str
    template: int
    slots: tuple[tuple[str, str], ...]

    def render(self) -> str:
        templates = EN_TEMPLATES if self.lang == "en" else ZH_TEMPLATES
        return templates[self.template].format(**dict(self.slots))


@dataclass
class Post:
    family: int
    lang: str
    sentences: list[Sentence]
    text: str = ""
    changed: str = ""  # for a sibling: "word" or "number", the kind of its one changed slot

    def render(self) -> str:
        joiner = " " if self.lang == "en" else ""
        return joiner.join(s.render() for s in self.sentences)


@dataclass
class Corpus:
    posts: list[Post] = field(default_factory=list)
    variants: list[tuple[int, str, str]] = field(default_factory=list)  # (post, kind, text)

    def families(self) -> set[int]:
        return {p.family for p in self.posts}


def _fill(rng: random.Random, lang: str, template: int) -> Sentence:
    templates, slots = (EN_TEMPLATES, EN_SLOTS) if lang == "en" else (ZH_TEMPLATES, ZH_SLOTS)
    names = sorted({part.split("}")[0] for part in templates[template].split("{")[1:]})
    return Sentence(lang, template, tuple((n, rng.choice(slots[n])) for n in names))


def _new_post(rng: random.Random, family: int, lengths: tuple[int, int]) -> Post:
    lang = "en" if rng.random() < 0.6 else "zh"
    # Log-uniform lengths: short posts are common, long ones still well represented.
    shortest, max_length = lengths
    target = int(shortest * (max_length / shortest) ** rng.random())
    templates = EN_TEMPLATES if lang == "en" else ZH_TEMPLATES
    post = Post(family, lang, [])
    while True:
        candidate = _fill(rng, lang, rng.randrange(len(templates)))
        trial = Post(family, lang, [*post.sentences, candidate])
        if len(trial.render()) > max_length:
            if post.sentences:
                break
            continue
        post = trial
        if len(post.render()) >= target:
            break
    return post


def _sibling(rng: random.Random, base: Post) -> Post:
    """The same post with one slot re-filled: the closest a distinct post gets to another."""
    slots = EN_SLOTS if base.lang == "en" else ZH_SLOTS
    sentences = list(base.sentences)
    index = rng.randrange(len(sentences))
    sentence = sentences[index]
    pos = rng.randrange(len(sentence.slots))
    name, value = sentence.slots[pos]
    other = rng.choice([v for v in slots[name] if v != value])
    new_slots = list(sentence.slots)
    new_slots[pos] = (name, other)
    sentences[index] = Sentence(sentence.lang, sentence.template, tuple(new_slots))
    changed = "number" if value.isdigit() else "word"
    return Post(base.family, base.lang, sentences, changed=changed)


# --- trivial variants ----------------------------------------------------------------------


def _is_cjk(ch: str) -> bool:
    return "\u4e00" <= ch <= "\u9fff"


def _char_edit(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(1, 2)):
        letters = [i for i, c in enumerate(chars) if c.isalpha()]
        if not letters:
            break
        i = rng.choice(letters)
        op = rng.choice(["sub", "del", "ins", "swap"])
        new = rng.choice(ZH_FILLER) if _is_cjk(chars[i]) else rng.choice("abcdefghiklmnoprstuy013")
        if op == "sub":
            chars[i] = new
        elif op == "del":
            del chars[i]
        elif op == "ins":
            chars.insert(i, new)
        elif i + 1 < len(chars):
            chars[i], chars[i + 1] = chars[i + 1], chars[i]
    return "".join(chars)


def _case(rng: random.Random, text: str) -> str:
    mode = rng.choice(["upper", "lower", "title", "random"])
    if mode == "upper":
        return text.upper()
    if mode == "lower":
        return text.lower()
    if mode == "title":
        return text.title()
    return "".join(c.upper() if rng.random() < 0.3 else c.lower() for c in text)


def _punct(rng: random.Random, text: str) -> str:
    stripped = "".join(c for c in text if c not in ".,!?。，！？")
    if rng.random() < 0.5:
        return stripped + rng.choice(PUNCT)
    words = text.split(" ")
    i = rng.randrange(len(words))
    words[i] = words[i] + rng.choice(PUNCT)
    return " ".join(words) + rng.choice(PUNCT)


def _at_random_boundaries(rng: random.Random, text: str, pieces: Sequence[str]) -> str:
    out = text
    for piece in pieces:
        spots = [i for i, c in enumerate(out) if c in " 。，！？"] + [len(out)]
        at = rng.choice(spots)
        out = out[:at] + piece + out[at:]
    return out


def _emoji(rng: random.Random, text: str) -> str:
    picks = [rng.choice(EMOJI) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.5:
        return text + " " + "".join(picks)
    return _at_random_boundaries(rng, text, picks)


def _url(rng: random.Random, text: str) -> str:
    slug = "".join(
        rng.choice("abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789")
        for _ in range(rng.randint(5, 9))
    )
    host = rng.choice(["https://bit.ly/", "http://t.cn/", "https://tinyurl.com/", "www.x.co/"])
    return f"{text} {host}{slug}"


def _spacing(rng: random.Random, text: str) -> str:
    if any(_is_cjk(c) for c in text) and rng.random() < 0.7:
        # Spaced-out Chinese ("加 微 信") defeats keyword filters.
        start = rng.randrange(max(1, len(text) - 8))
        return text[:start] + " ".join(text[start : start + 8]) + text[start + 8 :]
    words = text.split(" ")
    if len(words) > 1 and rng.random() < 0.5:
        i = rng.randrange(len(words) - 1)
        return " ".join([*words[:i], words[i] + words[i + 1], *words[i + 2 :]])
    i = rng.randrange(len(words))
    w = words[i]
    if len(w) > 2:
        cut = rng.randrange(1, len(w) - 1)
        words[i] = w[:cut] + " " + w[cut:]
    return "  ".join(words) + "\n"


def _word_swap(rng: random.Random, text: str) -> str:
    words = text.split(" ")
    if len(words) > 2:
        i = rng.randrange(len(words) - 1)
        words[i], words[i + 1] = words[i + 1], words[i]
        return " ".join(words)
    # Chinese has no spaces: swap two adjacent two-character chunks inside a run of Hanzi.
    runs = [i for i in range(len(text) - 3) if all(_is_cjk(c) for c in text[i : i + 4])]
    if not runs:
        return text
    i = rng.choice(runs)
    return text[:i] + text[i + 2 : i + 4] + text[i : i + 2] + text[i + 4 :]


def _zero_width(rng: random.Random, text: str) -> str:
    chars = list(text)
    for _ in range(rng.randint(2, 6)):
        chars.insert(rng.randrange(len(chars) + 1), rng.choice(ZERO_WIDTH))
    return "".join(chars)


def _mixed(rng: random.Random, text: str) -> str:
    edits = rng.sample([_case, _punct, _emoji, _zero_width], 2)
    # The link goes last so the punctuation edit cannot break it apart.
    for edit in [*edits, _url] if rng.random() < 0.5 else edits:
        text = edit(rng, text)
    return text


VARIANTS: dict[str, Callable[[random.Random, str], str]] = {
    "char_edit": _char_edit,
    "case": _case,
    "punct": _punct,
    "emoji": _emoji,
    "url": _url,
    "spacing": _spacing,
    "word_swap": _word_swap,
    "zero_width": _zero_width,
    "mixed": _mixed,
}


def build_corpus(n_posts: int, seed: int, *, lengths: tuple[int, int] = (20, 400)) -> Corpus:
    rng = random.Random(seed)
    corpus = Corpus()
    seen: set[str] = set()
    family = 0

    def keep(post: Post) -> bool:
        text = normalise(post.render())
        if text in seen:
            return False
        seen.add(text)
        post.text = text
        corpus.posts.append(post)
        return True

    while len(corpus.posts) < n_posts:
        family += 1
        base = _new_post(rng, family, lengths)
        if not keep(base):
            continue
        # Half the posts come with one to three hard-negative siblings.
        if rng.random() < 0.5:
            for _ in range(rng.randint(1, 3)):
                if len(corpus.posts) < n_posts:
                    keep(_sibling(rng, base))
    for index, post in enumerate(corpus.posts):
        for kind, make in VARIANTS.items():
            corpus.variants.append((index, kind, normalise(make(rng, post.text))))
    return corpus


# --- measurement ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Fingerprinted:
    fingerprint: int
    digits: str
    signal_chars: int


def _fingerprinted(text: str) -> Fingerprinted:
    return Fingerprinted(simhash64(text), digits(text), signal_length(text))


@dataclass(frozen=True)
class Query:
    kind: str  # "post" for a distinct post asking about the others, else the variant's kind
    lang: str
    signal_chars: int
    own_distance: int | None  # to the post a variant came from; None: the index never looks
    other_distance: int | None  # to the nearest *other* post the index would compare with


@dataclass(frozen=True)
class SiblingPair:
    changed: str  # "word" or "number"
    signal_chars: int  # the shorter of the two
    distance: int | None  # None: the index never compares them (digits differ, too short)


@dataclass(frozen=True)
class Measurement:
    queries: list[Query]
    siblings: list[SiblingPair]
    pairs_checked: int  # (query, post) pairs the index decided about
    exact: int  # variants equal to their post after normalise (the verdict cache's job)


def measure(corpus: Corpus, min_chars: int) -> Measurement:
    """Every distance the index's rule would compare, computed without Redis."""
    posts = [_fingerprinted(p.text) for p in corpus.posts]
    eligible = {i for i, p in enumerate(posts) if p.signal_chars >= min_chars}
    by_digits: dict[str, list[int]] = defaultdict(list)
    for i in sorted(eligible):
        by_digits[posts[i].digits].append(i)
    pairs = 0

    def nearest_other(q: Fingerprinted, origin: int) -> int | None:
        nonlocal pairs
        if q.signal_chars < min_chars:
            return None
        pairs += len(eligible) - (origin in eligible)
        best: int | None = None
        for j in by_digits.get(q.digits, ()):
            if j != origin:
                d = hamming(q.fingerprint, posts[j].fingerprint)
                best = d if best is None or d < best else best
        return best

    queries = [
        Query("post", post.lang, posts[i].signal_chars, None, nearest_other(posts[i], i))
        for i, post in enumerate(corpus.posts)
    ]
    exact = 0
    for origin, kind, text in corpus.variants:
        if text == corpus.posts[origin].text:
            exact += 1
            continue
        q, own = _fingerprinted(text), posts[origin]
        comparable = min(q.signal_chars, own.signal_chars) >= min_chars and q.digits == own.digits
        own_distance = hamming(q.fingerprint, own.fingerprint) if comparable else None
        lang = corpus.posts[origin].lang
        queries.append(Query(kind, lang, q.signal_chars, own_distance, nearest_other(q, origin)))

    families: dict[int, list[int]] = defaultdict(list)
    for i, post in enumerate(corpus.posts):
        families[post.family].append(i)
    siblings = []
    for members in families.values():
        for a, b in itertools.combinations(members, 2):
            shorter = min(posts[a].signal_chars, posts[b].signal_chars)
            comparable = shorter >= min_chars and posts[a].digits == posts[b].digits
            siblings.append(
                SiblingPair(
                    corpus.posts[b].changed,
                    shorter,
                    hamming(posts[a].fingerprint, posts[b].fingerprint) if comparable else None,
                )
            )
    return Measurement(queries, siblings, pairs, exact)


def _within(d: int | None, t: int) -> bool:
    return d is not None and d <= t


def _recalled(q: Query, t: int) -> bool:
    """The variant's own post is within the threshold and strictly nearer than any other."""
    return (
        q.own_distance is not None
        and q.own_distance <= t
        and (q.other_distance is None or q.other_distance > q.own_distance)
    )


def _rate(hits: int, total: int) -> float:
    return hits / total if total else 0.0


@dataclass(frozen=True)
class Rates:
    recall: float
    false_match_rate: float
    false_matches: int
    hard_negative_rate: float
    hard_negative_matches: int


def rates(queries: Sequence[Query], siblings: Sequence[SiblingPair], t: int) -> Rates:
    variants = [q for q in queries if q.kind != "post"]
    false = sum(_within(q.other_distance, t) for q in queries)
    hard = sum(_within(s.distance, t) for s in siblings)
    return Rates(
        recall=_rate(sum(_recalled(q, t) for q in variants), len(variants)),
        false_match_rate=_rate(false, len(queries)),
        false_matches=false,
        hard_negative_rate=_rate(hard, len(siblings)),
        hard_negative_matches=hard,
    )


def _pct(x: float) -> str:
    return f"{100 * x:6.2f}%"


def _fingerprint_cost_us(corpus: Corpus) -> tuple[float, float]:
    """µs per post: alone (`simhash64`), and in batches of 500 signals as triage asks."""
    texts = [p.text for p in corpus.posts]
    started = time.perf_counter()
    for text in texts:
        simhash64(text)
    alone = 1e6 * (time.perf_counter() - started) / len(texts)
    started = time.perf_counter()
    for n in range(0, len(texts), 500):
        fingerprints([signal(t) for t in texts[n : n + 500]])
    return alone, 1e6 * (time.perf_counter() - started) / len(texts)


def report(corpus: Corpus, m: Measurement, threshold: int, min_chars: int) -> None:
    siblings_by_kind = {c: sum(s.changed == c for s in m.siblings) for c in ("word", "number")}
    print(
        f"{len(corpus.posts)} posts ({sum(p.lang == 'zh' for p in corpus.posts)} Chinese, "
        f"{len(corpus.families())} families), {len(corpus.variants)} variants "
        f"({m.exact} equal to their post after normalise: the verdict cache's, left out), "
        f"{len(m.siblings)} hard-negative pairs ({siblings_by_kind['word']} one word apart, "
        f"{siblings_by_kind['number']} one number apart); "
        "fingerprint {:.0f} µs per post alone, {:.0f} µs in batches of 500".format(
            *_fingerprint_cost_us(corpus)
        )
    )
    print(f"\nmin_chars={min_chars}")
    print("threshold   recall  false-match         hard-negative")
    for t in range(9):
        r = rates(m.queries, m.siblings, t)
        print(
            f"{t:9d}  {_pct(r.recall)}  {_pct(r.false_match_rate)} ({r.false_matches:5d})"
            f"  {_pct(r.hard_negative_rate)} ({r.hard_negative_matches:4d})"
        )

    t = threshold
    print(f"\nthreshold={t}: recall by variant kind (English / Chinese)")
    for kind in VARIANTS:
        cells = []
        for lang in ("en", "zh"):
            qs = [q for q in m.queries if q.kind == kind and q.lang == lang]
            hits = sum(_recalled(q, t) for q in qs)
            cells.append(f"{_pct(_rate(hits, len(qs)))} ({len(qs):4d})" if qs else "  (all exact)")
        print(f"  {kind:11s} {'  '.join(cells)}")
    print(f"\nthreshold={t}: by signal length (letters and digits, CJK counting two)")
    print("  length     recall  false-match  hard-negative (pairs)")
    edges = [0, 16, 20, 24, 32, 48, 64, 96, 128, 192, 256, 512, 1024, 2048, 4096, 65536]
    for lo, hi in itertools.pairwise(edges):
        qs = [q for q in m.queries if lo <= q.signal_chars < hi]
        if not qs:
            continue
        vs = [q for q in qs if q.kind != "post"]
        ss = [s for s in m.siblings if lo <= s.signal_chars < hi]
        print(
            f"  {lo:3d}-{hi - 1:<4d} {_pct(_rate(sum(_recalled(q, t) for q in vs), len(vs)))}"
            f"  {_pct(_rate(sum(_within(q.other_distance, t) for q in qs), len(qs)))}"
            f"  {_pct(_rate(sum(_within(s.distance, t) for s in ss), len(ss)))} ({len(ss)})"
        )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--posts", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--min-length", type=int, default=20, help="shortest post target")
    parser.add_argument("--max-length", type=int, default=400, help="longest post, characters")
    parser.add_argument("--threshold", type=int, default=DEFAULT_THRESHOLD)
    parser.add_argument("--min-chars", type=int, default=DEFAULT_MIN_CHARS)
    args = parser.parse_args(argv)
    if not 1 <= args.min_length <= args.max_length or args.max_length < 20:
        parser.error("need 1 <= --min-length <= --max-length and --max-length >= 20")

    started = time.perf_counter()
    corpus = build_corpus(args.posts, args.seed, lengths=(args.min_length, args.max_length))
    m = measure(corpus, args.min_chars)
    report(corpus, m, args.threshold, args.min_chars)
    r = rates(m.queries, m.siblings, args.threshold)
    print(f"\n({time.perf_counter() - started:.1f} s)")
    summary = {
        "threshold": args.threshold,
        "min_chars": args.min_chars,
        "recall": round(r.recall, 4),
        "false_match_rate": round(r.false_match_rate, 5),
        "hard_negative_rate": round(r.hard_negative_rate, 5),
        "pairs_checked": m.pairs_checked,
        "posts": len(corpus.posts),
        "variants": len(m.queries) - len(corpus.posts),
        "hard_negative_pairs": len(m.siblings),
        "recall_by_kind": {
            kind: round(_rate(sum(_recalled(q, args.threshold) for q in qs), len(qs)), 4)
            for kind in VARIANTS
            if (qs := [q for q in m.queries if q.kind == kind])
        },
        "lengths": [args.min_length, args.max_length],
        "seed": args.seed,
    }
    print(orjson.dumps(summary).decode())
    return 0


if __name__ == "__main__":
    sys.exit(main())
