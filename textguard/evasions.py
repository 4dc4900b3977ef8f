"""Two disguises a prompt can ask a model for, undone on the checked text before it is looked up.

- A separator between every character (床x前x明x月x光, 床1前1明1月1光): punctuation and spaces are
  dropped by normalisation already, but a letter or digit is kept, and it cut every shingle. A
  run of six or more Chinese characters with the same letter or digit (once, or up to eight
  times where punctuation stood between) between each pair loses those separators, and so does
  the text around it wherever that letter or digit alternates with other characters.
- Pinyin for some of the characters (床前明yue光): a run of Latin letters next to a Chinese
  character that splits wholly into pinyin syllables becomes one placeholder per syllable, so
  that the text keeps the shape of the copy (a syllable stands where its character stood, as a
  homophone would) instead of several letters per character.

Only checked text is changed, never the corpus (the index stays as it is), and the normal form
keeps mapping every character back to its original offset: a span found ends where a syllable
begins, never inside an original character.
"""

from __future__ import annotations

import re
from collections import Counter
from functools import lru_cache

import numpy as np

from textguard.normalise import Normalised

__all__ = ["PLACEHOLDER", "undisguise"]

PLACEHOLDER = "\ue000"  # a private-use character: it stands for a character written in pinyin, and matches nothing

_SYLLABLES = frozenset((
    "a", "ai", "an", "ang", "ao", "ba", "bai", "ban", "bang", "bao", "bei", "ben", "beng", "bi", "bian",
    "biao", "bie", "bin", "bing", "bo", "bu", "ca", "cai", "can", "cang", "cao", "ce", "cen", "ceng", "cha",
    "chai", "chan", "chang", "chao", "che", "chen", "cheng", "chi", "chong", "chou", "chu", "chua", "chuai",
    "chuan", "chuang", "chui", "chun", "chuo", "ci", "cong", "cou", "cu", "cuan", "cui", "cun", "cuo", "da",
    "dai", "dan", "dang", "dao", "de", "den", "deng", "di", "dian", "diao", "die", "ding", "diu", "dong",
    "dou", "du", "duan", "dui", "dun", "duo", "e", "ei", "en", "eng", "er", "fa", "fan", "fang", "fei",
    "fen", "feng", "fo", "fou", "fu", "ga", "gai", "gan", "gang", "gao", "ge", "gei", "gen", "geng", "gong",
    "gou", "gu", "gua", "guai", "guan", "guang", "gui", "gun", "guo", "ha", "hai", "han", "hang", "hao",
    "he", "hei", "hen", "heng", "hong", "hou", "hu", "hua", "huai", "huan", "huang", "hui", "hun", "huo",
    "ji", "jia", "jian", "jiang", "jiao", "jie", "jin", "jing", "jiong", "jiu", "ju", "juan", "jue", "jun",
    "ka", "kai", "kan", "kang", "kao", "ke", "ken", "keng", "kong", "kou", "ku", "kua", "kuai", "kuan",
    "kuang", "kui", "kun", "kuo", "la", "lai", "lan", "lang", "lao", "le", "lei", "leng", "li", "lia",
    "lian", "liang", "liao", "lie", "lin", "ling", "liu", "lo", "long", "lou", "lu", "luan", "lun", "luo",
    "lv", "lve", "lu", "lue", "ma", "mai", "man", "mang", "mao", "me", "mei", "men", "meng", "mi", "mian",
    "miao", "mie", "min", "ming", "miu", "mo", "mou", "mu", "na", "nai", "nan", "nang", "nao", "ne", "nei",
    "nen", "neng", "ni", "nian", "niang", "niao", "nie", "nin", "ning", "niu", "nong", "nou", "nu", "nuan",
    "nun", "nuo", "nv", "nve", "nue", "o", "ou", "pa", "pai", "pan", "pang", "pao", "pei", "pen", "peng",
    "pi", "pian", "piao", "pie", "pin", "ping", "po", "pou", "pu", "qi", "qia", "qian", "qiang", "qiao",
    "qie", "qin", "qing", "qiong", "qiu", "qu", "quan", "que", "qun", "ran", "rang", "rao", "re", "ren",
    "reng", "ri", "rong", "rou", "ru", "rua", "ruan", "rui", "run", "ruo", "sa", "sai", "san", "sang",
    "sao", "se", "sen", "seng", "sha", "shai", "shan", "shang", "shao", "she", "shen", "sheng", "shi",
    "shou", "shu", "shua", "shuai", "shuan", "shuang", "shui", "shun", "shuo", "si", "song", "sou", "su",
    "suan", "sui", "sun", "suo", "ta", "tai", "tan", "tang", "tao", "te", "teng", "ti", "tian", "tiao",
    "tie", "ting", "tong", "tou", "tu", "tuan", "tui", "tun", "tuo", "wa", "wai", "wan", "wang", "wei",
    "wen", "weng", "wo", "wu", "xi", "xia", "xian", "xiang", "xiao", "xie", "xin", "xing", "xiong", "xiu",
    "xu", "xuan", "xue", "xun", "ya", "yan", "yang", "yao", "ye", "yi", "yin", "ying", "yo", "yong", "you",
    "yu", "yuan", "yue", "yun", "za", "zai", "zan", "zang", "zao", "ze", "zei", "zen", "zeng", "zha",
    "zhai", "zhan", "zhang", "zhao", "zhe", "zhen", "zheng", "zhi", "zhong", "zhou", "zhu", "zhua", "zhuai",
    "zhuan", "zhuang", "zhui", "zhun", "zhuo", "zi", "zong", "zou", "zu", "zuan", "zui", "zun", "zuo",
))
_LONGEST = max(map(len, _SYLLABLES))
_HAN = "\u3400-\u9fff"
_SEPARATED = re.compile(f"(?:[{_HAN}][a-z0-9]{{1,8}}){{5,}}[{_HAN}]")
_HAN_CHAR = re.compile(f"[{_HAN}]")
_MOST_SYLLABLES = 3  # a run of more is a word of another language that happens to split into syllables
_SEPARATOR_SHARE = 0.9  # of the characters between the Chinese ones in a run, at least this many the same
_LATIN = re.compile("[a-z]{1,40}")


def undisguise(normalised: Normalised) -> Normalised:
    """`normalised` with letter or digit separators dropped and pinyin syllables as placeholders."""
    text = normalised.text
    keep = np.ones(len(text), dtype=bool)
    placed: list[int] = []
    for separator in _separators(text):
        pattern = f"{separator}*(?:[^{separator}]{separator}{{1,8}}){{5,}}[^{separator}]{separator}*"
        for run in re.finditer(pattern, text):
            keep[run.start():run.end()] &= np.array([char != separator for char in run.group()])
    for run in _LATIN.finditer(text):
        start, end = run.span()
        beside_han = (start > 0 and _is_han(text[start - 1])) or (end < len(text) and _is_han(text[end]))
        lengths = _syllable_lengths(run.group()) if beside_han and keep[start:end].all() else None
        if lengths is None or len(lengths) > _MOST_SYLLABLES:  # a foreign name (dannunzio) stays as it is
            continue
        for length in lengths:
            placed.append(start)
            keep[start + 1:start + length] = False
            start += length
    if keep.all() and not placed:
        return normalised
    chars = np.array(list(text), dtype=object)
    chars[placed] = PLACEHOLDER
    return Normalised("".join(chars[keep]), normalised.offsets[keep])


def _separators(text: str) -> set[str]:
    """The letters or digits that stand between every pair of six or more Chinese characters
    somewhere in `text` (doubled where punctuation stood between); between other characters
    too (digits, Latin words), each then goes wherever it alternates with them."""
    found = set()
    for run in _SEPARATED.finditer(text):
        between = Counter(_HAN_CHAR.sub("", run.group()))
        separator, count = between.most_common(1)[0]
        if count >= _SEPARATOR_SHARE * between.total():  # (a letter of the text may stand among them)
            found.add(separator)
    return found


def _is_han(char: str) -> bool:
    return "\u3400" <= char <= "\u9fff"


@lru_cache(maxsize=4096)
def _syllable_lengths(letters: str) -> tuple[int, ...] | None:
    """The lengths of the fewest pinyin syllables `letters` splits into wholly, or None."""
    best: list[tuple[int, ...] | None] = [()] + [None] * len(letters)
    for end in range(1, len(letters) + 1):
        for length in range(1, min(_LONGEST, end) + 1):
            before = best[end - length]
            if before is not None and letters[end - length:end] in _SYLLABLES and (
                    best[end] is None or len(before) + 1 < len(best[end])):  # type: ignore[arg-type]
                best[end] = (*before, length)
    return best[len(letters)]
