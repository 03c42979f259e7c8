"""Word lists for the semantic guard (guard.py). Data only, no logic.

All entries are lower case. Plural "s" is stripped before contrast lookups
(guard._stem), so contrast sets hold singular stems.
"""

from __future__ import annotations

NUMBER_WORDS: dict[str, float] = {
    "zero": 0, "one": 1, "two": 2, "three": 3, "four": 4, "five": 5, "six": 6, "seven": 7,
    "eight": 8, "nine": 9, "ten": 10, "eleven": 11, "twelve": 12, "thirteen": 13,
    "fourteen": 14, "fifteen": 15, "sixteen": 16, "seventeen": 17, "eighteen": 18,
    "nineteen": 19, "twenty": 20, "thirty": 30, "forty": 40, "fifty": 50, "sixty": 60,
    "seventy": 70, "eighty": 80, "ninety": 90, "hundred": 100, "thousand": 1000,
    "million": 1e6, "billion": 1e9, "dozen": 12,
}  # fmt: skip

ORDINAL_WORDS: dict[str, float] = {
    "first": 1, "second": 2, "third": 3, "fourth": 4, "fifth": 5, "sixth": 6, "seventh": 7,
    "eighth": 8, "ninth": 9, "tenth": 10, "eleventh": 11, "twelfth": 12, "twentieth": 20,
    "hundredth": 100,
}  # fmt: skip

# Unit words recognised anywhere (attached to a number or free, e.g. "... in km").
_UNIT_GROUPS: dict[str, tuple[str, ...]] = {
    "degf": ("fahrenheit",),
    "degc": ("celsius", "centigrade"),
    "kelvin": ("kelvin",),
    "km": ("km", "kms", "kilometer", "kilometers", "kilometre", "kilometres"),
    "mi": ("mile", "miles"),
    "m": ("meter", "meters", "metre", "metres"),
    "cm": ("cm", "centimeter", "centimeters", "centimetre", "centimetres"),
    "mm": ("mm", "millimeter", "millimeters", "millimetre", "millimetres"),
    "ft": ("ft", "foot", "feet"),
    "in": ("inch", "inches"),
    "yd": ("yd", "yds", "yard", "yards"),
    "kg": ("kg", "kgs", "kilo", "kilos", "kilogram", "kilograms", "kilogramme"),
    "g": ("gram", "grams", "gramme", "grammes"),
    "mg": ("mg", "milligram", "milligrams"),
    "lb": ("lb", "lbs", "pound", "pounds"),
    "oz": ("oz", "ounce", "ounces"),
    "t": ("ton", "tons", "tonne", "tonnes"),
    "l": ("liter", "liters", "litre", "litres"),
    "ml": ("ml", "milliliter", "milliliters", "millilitre", "millilitres"),
    "gal": ("gal", "gallon", "gallons"),
    "cup": ("cup", "cups"),
    "tbsp": ("tbsp", "tablespoon", "tablespoons"),
    "tsp": ("tsp", "teaspoon", "teaspoons"),
    "pt": ("pint", "pints"),
    "qt": ("quart", "quarts"),
    "sec": ("seconds", "secs"),
    "min": ("minute", "minutes", "mins"),
    "h": ("hour", "hours", "hr", "hrs"),
    "day": ("day", "days"),
    "week": ("week", "weeks"),
    "month": ("month", "months"),
    "year": ("year", "years", "yr", "yrs"),
    "decade": ("decade", "decades"),
    "century": ("century", "centuries"),
    "mi/h": ("mph",),
    "km/h": ("kph", "kmh"),
    "knot": ("knot", "knots"),
    "byte": ("byte", "bytes"),
    "bit": ("bit", "bits"),
    "kb": ("kb", "kilobyte", "kilobytes"),
    "mb": ("mb", "megabyte", "megabytes"),
    "gb": ("gb", "gigabyte", "gigabytes"),
    "tb": ("tb", "terabyte", "terabytes"),
    "usd": ("usd", "dollar", "dollars", "buck", "bucks"),
    "eur": ("eur", "euro", "euros"),
    "gbp": ("gbp", "sterling"),
    "jpy": ("jpy", "yen"),
    "inr": ("inr", "rupee", "rupees"),
    "cny": ("cny", "rmb", "yuan"),
    "pct": ("percent", "pct", "percentage"),
    "kcal": ("kcal", "calorie", "calories", "cal"),
    "kwh": ("kwh",),
    "w": ("watt", "watts"),
    "kw": ("kw", "kilowatt", "kilowatts"),
    "acre": ("acre", "acres"),
    "ha": ("hectare", "hectares"),
}
UNITS: dict[str, str] = {w: unit for unit, words in _UNIT_GROUPS.items() for w in words}

# Ambiguous short forms: a unit only right after a number ("5 m", "100 c"),
# or, for the upper-case temperature letters, anywhere ("convert F to C").
SHORT_UNITS: dict[str, str] = {
    "F": "degf", "C": "degc", "K": "kelvin", "f": "degf", "c": "degc", "k": "kelvin",
    "m": "m", "g": "g", "l": "l", "s": "sec", "second": "sec", "sec": "sec", "min": "min",
    "h": "h", "mi": "mi", "t": "t", "am": "am", "pm": "pm",
}  # fmt: skip

SYMBOL_UNITS: dict[str, str] = {"$": "usd", "€": "eur", "£": "gbp", "¥": "jpy", "%": "pct"}

NEGATIONS: frozenset[str] = frozenset(
    "not no never none nobody nothing nowhere neither nor without cannot cant dont doesnt "
    "isnt arent wasnt werent wont shouldnt wouldnt couldnt didnt hasnt havent hadnt aint".split()
)

# Downward-entailing words (core/cache/slots.py: polarity): a prompt with one more of them asks
# for the opposite ("clean" / "avoid cleaning", "denser" / "less dense"). A closed class.
DOWNWARD: frozenset[str] = NEGATIONS | frozenset(
    "avoid fail lack prevent refuse unable less fewer least cannot hardly barely seldom rarely".split()
)

# Words around which the order of the two sides matters ("X to Y", "X vs Y").
DIRECTION_MARKERS: frozenset[str] = frozenset("to into vs versus than from against over".split())

# Words that end the phrase next to a direction marker: in "convert a PDF to
# Word for free", "free" is not the target of "to".
CLAUSE_BREAKS: frozenset[str] = frozenset(
    "for with in on at by of about and or but that which who if because while during".split()
)

# "how long", "how many": the kind of answer asked for. Any other "how ..."
# ("how do I", "how to", "how vaccines work") asks for a method.
HOW_DEGREE: frozenset[str] = frozenset(
    "long far many much old tall big high often fast large deep wide heavy soon early late hot cold".split()
)

# Verbs whose particle flips the meaning: turn on / turn off, log in / log out.
PHRASAL_VERBS: frozenset[str] = frozenset(
    "turn switch power log sign check opt zoom plug clock cash shut start".split()
)
PARTICLES: frozenset[str] = frozenset("on off in out up down".split())

# Abbreviations whose trailing "." does not end a sentence.
ABBREVIATIONS: frozenset[str] = frozenset("vs v etc e g i eg ie mr mrs dr st approx".split())

# Function words: never a key term, never a name even when capitalised. Keep
# content words out ("go", "like"): "Is Rust faster than Go?" needs them.
STOPWORDS: frozenset[str] = frozenset(
    """a an the of in on at for with by about as is are was were be been being am do does did
    i you he she it we they me my your our their his her its this that these those what which
    who whom whose when where why how can could would should will shall may might must and or
    but if so then there here please some any many much also just very really i'm it's what's
    whats i'd i've you're""".split()
)

# Contractions and their spelled-out words: "what's" and "what is" are one edit apart in
# words but ask the same (slots.trivial_edit compares the spelled-out forms). Only forms that
# are not also a possessive ("John's") or ambiguous beyond "is"/"has" in a question.
CONTRACTIONS: dict[str, tuple[str, ...]] = {
    **{f"{w}'s": (w, "is") for w in "what who where how when why that there here it".split()},
    "whats": ("what", "is"), "whos": ("who", "is"), "wheres": ("where", "is"), "hows": ("how", "is"),
    "i'm": ("i", "am"), "i'd": ("i", "would"), "i've": ("i", "have"), "i'll": ("i", "will"),
    "you're": ("you", "are"), "we're": ("we", "are"), "they're": ("they", "are"),
    "isn't": ("is", "not"), "aren't": ("are", "not"), "don't": ("do", "not"),
    "doesn't": ("does", "not"), "didn't": ("did", "not"), "can't": ("can", "not"),
    "won't": ("will", "not"), "shouldn't": ("should", "not"), "wouldn't": ("would", "not"),
    "couldn't": ("could", "not"), "let's": ("let", "us"),
}

# Words that frame a request without changing it ("a good ...", "please"):
# left out of the word-order and one-word-difference checks.
FILLER: frozenset[str] = frozenset("good nice great please kindly thanks thank hi hey hello".split())

# Verbs that frame a request only at the start of a sentence or before "me"/"us"
# ("Give me ...", "Recommend some ..."); elsewhere they are content: "when I give a gift".
FRAMING_VERBS: frozenset[str] = frozenset(
    "give tell show list recommend suggest provide share want need know help let get got".split()
)

# Interchangeable words: replacing one by another keeps the question. Sides
# of CONTRAST_SETS count as synonyms too ("fastest"/"quickest").
SYNONYM_SETS: tuple[frozenset[str], ...] = tuple(
    frozenset(group.split())
    for group in (
        "tip advice idea suggestion pointer",
        "symptom sign",
        "fix repair",
        "car automobile vehicle",
        "kid child children",
        "photo picture image",
        "film movie",
        "job career",
        "use utilize",
        "find locate",
        "buy purchase",
        "begin start",
        "end finish",
        "error bug",
        "cost price",
        "fridge refrigerator",
        "bike bicycle",
        "tire tyre",
        "mail email e-mail",
        "pc computer",
        "laptop notebook",
        "phone smartphone",
        "doctor physician",
        "dad father",
        "mom mum mother",
    )
)

# English irregular verbs (a general grammar table, not words taken from pairs): base form, past,
# past participle; "/" separates variants. roles.lemma maps every form to the base, so "took" /
# "take" and "lost" / "lose" are one verb ("Who did X take Y from?" / "Who took Y from X?").
_IRREGULAR = """
arise arose arisen | awake awoke awoken | be was/were been | bear bore borne/born | beat beat beaten
become became become | begin began begun | bend bent bent | bet bet bet | bid bid bid | bind bound bound
bite bit bitten | bleed bled bled | blow blew blown | break broke broken | breed bred bred
bring brought brought | broadcast broadcast broadcast | build built built | burn burnt/burned burnt
burst burst burst | buy bought bought | cast cast cast | catch caught caught | choose chose chosen
cling clung clung | come came come | cost cost cost | creep crept crept | cut cut cut | deal dealt dealt
dig dug dug | dive dove/dived dived | do did done | draw drew drawn | dream dreamt/dreamed dreamt
drink drank drunk | drive drove driven | dwell dwelt dwelt | eat ate eaten | fall fell fallen
feed fed fed | feel felt felt | fight fought fought | find found found | flee fled fled | fling flung flung
fly flew flown | forbid forbade forbidden | forecast forecast forecast | foresee foresaw foreseen
forget forgot forgotten | forgive forgave forgiven | freeze froze frozen | get got gotten/got
give gave given | go went gone | grind ground ground | grow grew grown | hang hung hung | have had had
hear heard heard | hide hid hidden | hit hit hit | hold held held | hurt hurt hurt | keep kept kept
kneel knelt knelt | know knew known | lay laid laid | lead led led | lean leant/leaned leant
leap leapt/leaped leapt | learn learnt/learned learnt | leave left left | lend lent lent | let let let
lie lay lain | light lit lit | lose lost lost | make made made | mean meant meant | meet met met
mislead misled misled | mistake mistook mistaken | overcome overcame overcome | overtake overtook overtaken
overthrow overthrew overthrown | pay paid paid | prove proved proven | put put put | quit quit quit
read read read | rid rid rid | ride rode ridden | ring rang rung | rise rose risen | run ran run
say said said | see saw seen | seek sought sought | sell sold sold | send sent sent
set set set | sew sewed sewn | shake shook shaken | shed shed shed | shine shone shone | shoot shot shot
show showed shown | shrink shrank shrunk | shut shut shut | sing sang sung | sink sank sunk | sit sat sat
slay slew slain | sleep slept slept | slide slid slid | sling slung slung | slit slit slit
smell smelt/smelled smelt | sow sowed sown | speak spoke spoken | speed sped sped | spell spelt/spelled spelt
spend spent spent | spill spilt/spilled spilt | spin spun spun | spit spat spat | split split split
spoil spoilt/spoiled spoilt | spread spread spread | spring sprang sprung | stand stood stood
steal stole stolen | stick stuck stuck | sting stung stung | stink stank stunk | stride strode stridden
strike struck struck | string strung strung | strive strove striven | swear swore sworn
sweep swept swept | swell swelled swollen | swim swam swum | swing swung swung | take took taken
teach taught taught | tear tore torn | tell told told | think thought thought | throw threw thrown
thrust thrust thrust | tread trod trodden | undergo underwent undergone | understand understood understood
undertake undertook undertaken | undo undid undone | upset upset upset | wake woke woken | wear wore worn
weave wove woven | weep wept wept | win won won | wind wound wound | withdraw withdrew withdrawn
withhold withheld withheld | withstand withstood withstood | wring wrung wrung | write wrote written
"""
# form -> base; the first base listed wins a form two verbs share ("lay": lie / lay, "saw": see / saw)
IRREGULAR_VERBS: dict[str, str] = {}
for _entry in _IRREGULAR.replace("\n", " | ").split("|"):
    if _entry.split():
        _base, *_forms = _entry.split()
        for _form in [_base, *(f for forms in _forms for f in forms.split("/"))]:
            IRREGULAR_VERBS.setdefault(_form, _base)
# the irregular present forms ("does" is no "doe" + "s")
IRREGULAR_VERBS.update({"am": "be", "is": "be", "are": "be", "has": "have", "does": "do", "goes": "go"})

# Personal pronouns in object case and their subject case: "Who owes me?" asks about the person
# "Who do I owe?" names as the subject. "her" is left out (also a possessive), "you" and "it" are
# both cases already.
OBJECT_PRONOUNS: dict[str, str] = {"me": "i", "us": "we", "him": "he", "them": "they"}

# Prefixes that negate a word: "cooked" vs "uncooked", "legal" vs "illegal".
NEGATING_PREFIXES: tuple[str, ...] = ("un", "in", "im", "il", "ir", "dis", "non", "non-")

# Words that start a prompt without being a name: a capitalised word at the
# start of a sentence is an entity unless it is listed here. Extend freely.
COMMON: frozenset[str] = STOPWORDS | frozenset(
    """explain describe write tell give list name define summarize summarise translate convert
    calculate compare recommend suggest show help make create find plan generate draft provide
    send copy switch switching share teach walk outline rewrite fix repair check improve
    best cheapest fastest quickest top good great simple quick easy free new old
    tips tip ideas idea steps step ways formula recipe recipes examples example advice guide
    foods food plants animals birds countries things symptoms vegetables health speed
    pros cons most least monthly square whats hows wheres whos isnt doesnt dont cant
    hi hey hello thanks thank sorry excuse kindly okay ok yes no not never without
    is are was were am be do does did can could would should will shall may might must
    have has had get got let lets let's i'm i'd i've i'll you're we're they're it's
    that's there's here's who's what's where's how's when's why's isn't aren't don't
    doesn't can't won't shouldn't wouldn't couldn't didn't
    my your our their his her its this that these those some any each every all both
    which what who whom whose when where why how whether if while after before during
    in on at for with by about as of from to into over under between among through
    and or but so then than also just only even still again once twice
    the a an one two three four five six seven eight nine ten
    quick question basically just anyway also keep try avoid include use add put take
    turn set run say ask answer look read see stop start choose pick tell
    ok okay it
    email e mail mortgage binary birthday birds book books movie movies song songs
    cheap expensive safe healthy bad better worse worst more less much many
    i me we us you he she it they them
    """.split()
)

# Sides of each contrast set: prompts that use different sides ask different
# questions ("advantages" vs "disadvantages", "when" vs "where"). Stems only.
CONTRAST_SETS: tuple[tuple[frozenset[str], ...], ...] = tuple(
    tuple(frozenset(side.split()) for side in group.split("|"))
    for group in (
        "advantage benefit pro upside | disadvantage drawback con downside risk",
        "best top | worst",
        "better | worse",
        "most | least",
        "more | less fewer",
        "increase raise boost | decrease reduce lower",
        "gain | lose",
        "win | lose",
        "largest biggest | smallest",
        "large big huge | small little tiny",
        "larger bigger | smaller",
        "highest | lowest",
        "high | low",
        "higher | lower",
        "longest | shortest",
        "longer | shorter",
        "hottest warmest | coldest coolest",
        "hot warm | cold cool",
        "hotter warmer | colder cooler",
        "fastest quickest | slowest",
        "fast quick | slow",
        "faster quicker | slower",
        "cheapest | priciest",
        "cheap cheaper inexpensive | expensive pricey",
        "oldest | youngest newest",
        "older | younger newer",
        "before | after",
        "early earlier earliest | late later latest",
        "first | last",
        "start begin | stop end finish",
        "enable activate | disable deactivate",
        "open | close",
        "add insert | remove delete",
        "install | uninstall",
        "create make | delete remove destroy",
        "encrypt | decrypt",
        "encode | decode",
        "compress zip | decompress unzip",
        "import | export",
        "upload | download",
        "buy purchase | sell",
        "push | pull",
        "input | output",
        "send | receive",
        "borrow | lend",
        "north | south | east | west",
        "up | down",
        "above | below",
        "inside indoor indoors | outside outdoor outdoors",
        "upper uppercase | lower lowercase",
        "ascending asc | descending desc",
        "positive | negative",
        "true | false",
        "safe | unsafe dangerous",
        "good | bad",
        "healthy | unhealthy",
        "legal | illegal",
        "possible | impossible",
        "correct | incorrect wrong",
        "valid | invalid",
        "like love | dislike hate",
        "agree | disagree",
        "accept | reject",
        "allow permit | deny block forbid ban",
        "include | exclude",
        "success | failure",
        "profit | loss",
        "debit | credit",
        "asset | liability",
        "rich | poor",
        "strong strength | weak weakness",
        "wet | dry",
        "full | empty",
        "male man men boy | female woman women girl",
        "morning | evening night",
        "spring | summer | autumn fall | winter",
        "breakfast | lunch | dinner",
        "mean average | median | mode",
        "sunrise | sunset",
        "arrival arrive | departure depart",
        "inhale | exhale",
        "plus addition | minus subtract subtraction | time multiply multiplied | divide divided division",
        "union | intersection",
        "inner | outer",
        "client | server",
        "frontend | backend",
        "synchronous sync | asynchronous async",
        "horizontal horizontally | vertical vertically",
        "upgrade | downgrade",
        "key | value",
        "row | column",
        "turn_on switch_on power_on start_up | turn_off switch_off power_off shut_down",
        "log_in sign_in login signin logon | log_out sign_out logout signout logoff",
        "check_in | check_out",
        "zoom_in | zoom_out",
        "opt_in | opt_out",
        "plug_in | unplug plug_out",
        # The kind of answer asked for. "how many" and "how much" both ask for an amount
        # ("how many hours of sleep").
        "when | where | who | why | how_manner | how_long | how_far | how_many how_much | how_old"
        " | how_tall how_big how_high | how_often | how_fast",
    )
)
CONTRAST_TERMS: frozenset[str] = frozenset(w for g in CONTRAST_SETS for side in g for w in side)

# term -> [(group index, side index)], so a check only visits the groups it uses
CONTRAST_INDEX: dict[str, list[tuple[int, int]]] = {}
for _g, _group in enumerate(CONTRAST_SETS):
    for _s, _side in enumerate(_group):
        for _w in _side:
            CONTRAST_INDEX.setdefault(_w, []).append((_g, _s))

# word -> indexes of the synonym groups (and contrast sides) it belongs to
SYNONYM_INDEX: dict[str, set[int]] = {}
for _i, _group in enumerate([*SYNONYM_SETS, *(side for group in CONTRAST_SETS for side in group)]):
    for _w in _group:
        SYNONYM_INDEX.setdefault(_w, set()).add(_i)
