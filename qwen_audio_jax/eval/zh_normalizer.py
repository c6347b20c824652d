"""Chinese text normaliser used by the official Qwen2-Audio ASR scorer (a port of SpeechIO's ``cn_tn.py``).

Origin: ``cn_tn.py`` by Zhiyang Zhou (2019, https://github.com/Joee1995/chn_text_norm) and Jiayu Du (2019-2022),
published in speechio/chinese_text_normalization (``python/cn_tn.py``) and SpeechColab/Leaderboard
(``utils/cn_tn.py``), and redistributed by QwenLM/Qwen2-Audio as ``eval_audio/cn_tn.py`` (that repository is
Apache-2.0; the SpeechIO original ships no licence file, its authors are credited here). The Qwen2-Audio script
(``eval_audio/evaluate_asr.py``) builds ``TextNorm(to_banjiao=False, to_upper=False, to_lower=False,
remove_fillers=False, remove_erhua=False, check_chars=False, remove_space=False, cc_mode='')``, so
``TextNorm.__call__`` reduces to exactly two steps, which are all this module keeps:

1. ``normalize_nsw``: verbalise non-standard words (dates, money, phone numbers, fractions, percentages, numbers
   with a measure word, long digit strings, plain numbers) into Chinese characters, in that order;
2. replace every Chinese punctuation mark (the Zhon list) and every ``string.punctuation`` character by a space.

The port keeps the original's quirks on purpose, because the published WERs were computed with them: every rewrite
uses ``str.replace(found, new, 1)``, which rewrites the *first* occurrence of the found string in the text (not
necessarily the one the pattern matched), and ``\\d`` is Python's Unicode digit class (full-width ``３`` counts).
The parts of the original that never run with all options off (``chn2num``, erhua and filler removal, the
full-width table, the character whitelist, OpenCC) are left out.
"""

from __future__ import annotations

import re
import string

__all__ = ["PUNCS", "TextNorm", "normalize_nsw", "num2chn"]

# ---- constants (cn_tn.py "basic constant") ----------------------------------------------------------------------
_DIGITS = "零一二三四五六七八九"
_LIANG = "两"  # TWO_ALTS[0]: '2' read before 百/千/万/亿... (num2chn alt_two)
_POINT = "点"
# num2chn's unit table for the default 'mid' numbering system: 十百千万 are 10^1..10^4, then 亿=10^8, 兆=10^12 ...
_UNITS = list(zip((1, 2, 3, 4), "十百千万")) + [((i + 2) * 4, c) for i, c in enumerate("亿兆京垓秭穰沟涧正载")]

CURRENCY_UNITS = "((亿|千万|百万|万|千|百)|(亿|千万|百万|万|千|百|)元|(亿|千万|百万|万|千|百|)块|角|毛|分)"
COM_QUANTIFIERS = (
    "(匹|张|座|回|场|尾|条|个|首|阙|阵|网|炮|顶|丘|棵|只|支|袭|辆|挑|担|颗|壳|窠|曲|墙|群|腔|"
    "砣|座|客|贯|扎|捆|刀|令|打|手|罗|坡|山|岭|江|溪|钟|队|单|双|对|出|口|头|脚|板|跳|枝|件|贴|"
    "针|线|管|名|位|身|堂|课|本|页|家|户|层|丝|毫|厘|分|钱|两|斤|担|铢|石|钧|锱|忽|(千|毫|微)克|"
    "毫|厘|分|寸|尺|丈|里|寻|常|铺|程|(千|分|厘|毫|微)米|撮|勺|合|升|斗|石|盘|碗|碟|叠|桶|笼|盆|"
    "盒|杯|钟|斛|锅|簋|篮|盘|桶|罐|瓶|壶|卮|盏|箩|箱|煲|啖|袋|钵|年|月|日|季|刻|时|周|天|秒|分|旬|"
    "纪|岁|世|更|夜|春|夏|秋|冬|代|伏|辈|丸|泡|粒|颗|幢|堆|条|根|支|道|面|片|张|颗|块)"
)

# Punctuation from the Zhon project, as listed in the TextNorm version of cn_tn.py (CN_PUNCS_STOP + CN_PUNCS_NONSTOP),
# plus ASCII string.punctuation; each one becomes a space (PUNCS_TRANSFORM).
CN_PUNCS_STOP = "！？｡。"
CN_PUNCS_NONSTOP = (
    "＂＃＄％＆＇（）＊＋，－／：；＜＝＞＠［＼］＾＿｀｛｜｝～｟｠｢｣､、〃《》「」『』【】〔〕〖〗〘〙〚〛〜〝〞〟〰〾〿"
    "–—‘’‛“”„‟…‧﹏·〈〉-"
)
PUNCS = CN_PUNCS_STOP + CN_PUNCS_NONSTOP + string.punctuation
_PUNCS_TRANSFORM = str.maketrans(PUNCS, " " * len(PUNCS))

# Symbols are (kind, value, char): kind "d" digit (value 0-9), "u" unit (value = power of ten), "p" decimal point.
_D = [("d", i, c) for i, c in enumerate(_DIGITS)]


def num2chn(number_string: str, *, alt_two: bool = True, use_units: bool = True) -> str:
    """cn_tn.num2chn with its defaults (mid numbering, simplified, not 'big', alt_zero/alt_one off, use_zeros on).

    ``Cardinal`` calls it as is; ``Digit`` and ``TelePhone`` with ``alt_two=False, use_units=False`` (read digit
    by digit). Raises ValueError on more than one '.', like the original.
    """

    def get_value(value_string: str) -> list[tuple]:
        striped = value_string.lstrip("0")
        if not striped:  # record nothing if all zeros
            return []
        if len(striped) == 1:  # one digit, with a 零 in front if zeros were stripped
            return [_D[0], _D[int(striped)]] if len(value_string) != len(striped) else [_D[int(striped)]]
        power, char = next(u for u in reversed(_UNITS) if u[0] < len(striped))
        # the original slices the *unstripped* string for the head and the stripped one for the tail
        return get_value(value_string[:-power]) + [("u", power, char)] + get_value(striped[-power:])

    parts = number_string.split(".")
    if len(parts) > 2:
        raise ValueError(f"invalid input num string with more than one dot: {number_string}")
    int_string, dec_string = parts[0], (parts[1] if len(parts) == 2 else "")
    if use_units and len(int_string) > 1:
        symbols = get_value(int_string)
    else:
        symbols = [_D[int(c)] for c in int_string]
    if dec_string:
        symbols += [("p", None, _POINT)] + [_D[int(c)] for c in dec_string]

    if alt_two:  # 2 -> 两 before a unit other than 十, when not preceded by 十 (两百, 两千, 两万; but 二十, 十二万)
        for i, (kind, value, _) in enumerate(symbols):
            if kind == "d" and value == 2:
                nxt = symbols[i + 1] if i < len(symbols) - 1 else None
                prev = symbols[i - 1] if i > 0 else None
                next_is_big_unit = nxt is not None and nxt[0] == "u" and nxt[1] != 1
                prev_ok = prev is None or (prev[0] == "u" and prev[1] != 1)
                if next_is_big_unit and prev_ok:
                    symbols[i] = ("d", 2, _LIANG)

    result = "".join(s[2] for s in symbols)
    if result.startswith(_POINT):
        return _DIGITS[0] + result
    if len(result) >= 2 and result[1] == "十" and result[0] == "一":  # 一十X -> 十X (10..19)
        result = result[1:]
    return result


def _cardinal(s: str) -> str:
    return num2chn(s)


def _digit(s: str) -> str:
    return num2chn(s, alt_two=False, use_units=False)


def _date(date: str) -> str:
    """cn_tn.Date.date2chntext: year digit by digit, month and day as cardinals (note: falls back to the whole
    ``date``, not the remainder, when there is no 月, exactly as the original does)."""
    try:
        year, other = date.strip().split("年", 1)
        year = _digit(year) + "年"
    except ValueError:
        other, year = date, ""
    month = day = ""
    if other:
        try:
            month, day = other.strip().split("月", 1)
            month = _cardinal(month) + "月"
        except ValueError:
            day, month = date, ""
        if day:
            day = _cardinal(day[:-1]) + day[-1]
    return year + month + day


def _money(money: str) -> str:
    for found in re.findall(r"(\d+(\.\d+)?)", money):  # Money.money2chntext replaces *all* occurrences
        money = money.replace(found[0], _cardinal(found[0]))
    return money


def _telephone(phone: str, fixed: bool) -> str:
    parts = phone.split("-") if fixed else phone.strip("+").split()
    return "".join(_digit(p) for p in parts)


def _fraction(fraction: str) -> str:
    numerator, denominator = fraction.split("/")
    return _cardinal(denominator) + "分之" + _cardinal(numerator)


def _percentage(percentage: str) -> str:
    return "百分之" + _cardinal(percentage.strip().strip("%"))


# (pattern, rewriter, which findall item to rewrite) in cn_tn.normalize_nsw order
_DATE = re.compile(r"\D+((([089]\d|(19|20)\d{2})年)?(\d{1,2}月(\d{1,2}[日号])?)?)")
_MONEY = re.compile(r"\D+((\d+(\.\d+)?)[多余几]?" + CURRENCY_UNITS + r"(\d" + CURRENCY_UNITS + r"?)?)")
_MOBILE = re.compile(r"\D((\+?86 ?)?1([38]\d|5[0-35-9]|7[678]|9[89])\d{8})\D")
_FIXED = re.compile(r"\D((0(10|2[1-3]|[3-9]\d{2})-?)?[1-9]\d{6,7})\D")
_FRACTION = re.compile(r"(\d+/\d+)")
_PERCENT = re.compile(r"(\d+(\.\d+)?%)")
_QUANTIFIED = re.compile(r"(\d+(\.\d+)?)[多余几]?" + COM_QUANTIFIERS)
_DIGIT_STRING = re.compile(r"(\d{4,32})")
_NUMBER = re.compile(r"(\d+(\.\d+)?)")
_PARTICULAR = re.compile(r"(([a-zA-Z]+)二([a-zA-Z]+))")


def _rewrite(text: str, pattern: re.Pattern, rewrite) -> str:
    for found in pattern.findall(text):
        key = found[0] if isinstance(found, tuple) else found
        text = text.replace(key, rewrite(key), 1)
    return text


def normalize_nsw(raw_text: str) -> str:
    """cn_tn.normalize_nsw: Non-Standard-Word verbalisation,
    e.g. '她出生于86年8月18日' -> '她出生于八六年八月十八日'."""
    text = "^" + raw_text + "$"  # anchors so the \D-delimited patterns can match at the ends
    text = _rewrite(text, _DATE, _date)
    text = _rewrite(text, _MONEY, _money)
    text = _rewrite(text, _MOBILE, lambda s: _telephone(s, fixed=False))
    text = _rewrite(text, _FIXED, lambda s: _telephone(s, fixed=True))
    text = _rewrite(text, _FRACTION, _fraction)
    text = text.replace("％", "%")
    text = _rewrite(text, _PERCENT, _percentage)
    text = _rewrite(text, _QUANTIFIED, _cardinal)
    text = _rewrite(text, _DIGIT_STRING, _digit)
    text = _rewrite(text, _NUMBER, _cardinal)
    for found in _PARTICULAR.findall(text):  # restore P2P, O2O, B2C ...
        text = text.replace(found[0], found[1] + "2" + found[2], 1)
    return text.lstrip("^").rstrip("$")


class TextNorm:
    """``cn_tn.TextNorm`` with every option off, as Qwen2-Audio's evaluate_asr.py configures it: NSW verbalisation,
    then punctuation -> space. Spaces are kept (``remove_space=False``); the WER code joins characters anyway."""

    def __call__(self, text: str) -> str:
        return normalize_nsw(text).translate(_PUNCS_TRANSFORM)
