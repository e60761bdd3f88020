#!/usr/bin/env python3
"""Writes the seed corpus of guardline's fuzz targets into fuzz/corpus/<target>/.

Every value is synthetic: invented codes, names and ID-like numbers. Run it from anywhere;
it rewrites the seed files it owns (seed-*) and leaves other files alone.

A decoder input is one options byte and the body; see `split_options` in fuzz/src/lib.rs:
bit 0 GBK, bit 1 UTF-8 BOM, bits 2-4 and 7 the mapping, bits 5-6 the JSON paths.
"""

import json
import pathlib

HERE = pathlib.Path(__file__).resolve().parent
ROOT = HERE.parent
CORPUS = HERE / "corpus"


def options(gbk=False, bom=False, mapping=0, paths=0):
    return (int(gbk) | (int(bom) << 1) | ((mapping & 7) << 2) | ((paths & 3) << 5)
            | ((mapping & 8) << 4))


def body(text, gbk):
    return text.encode("gb18030" if gbk else "utf-8")


# Synthetic records, one per mapping of MAPPINGS in fuzz/src/lib.rs.
RECORDS = {
    0: {"record_id": "R-1", "hh_id": "632522100201001", "village_code": "632522100201",
        "village_name": "示例村", "category": "脱贫户", "head_name": "张三",
        "members": [{"id_number": "63252219900101001X"}, "632522199202020028"],
        "income_per_capita": "8,230.50"},
    1: {"record_id": "RS-1", "id_number": "632522199001010011", "month": "2026-03",
        "amount": 3010.5},
    2: {"claim_id": "C-1", "hh_id": "632522100201001", "settle_date": 1772726400,
        "out_of_pocket": 120000, "total_cost": "5000"},
    3: {"meta": {"id": "N-1"}, "people": [{"id_number": "pk:000102030405060708090a0b0c0d0e0f"}],
        "period": {"month": "202603"}, "pay": [0, "2500"]},
    4: {"record_id": "W-1", "village_code": "632522100201", "sample_date": "20260305"},
    5: {"记录编号": "ZJ1", "户编号": "632522100201001", "日期": "2026-03-05T10:00:00+08:00",
        "鉴定等级": "C", "金额": 0},
    6: {"record_id": "E-1", "student_id_number": "632522201001010044",
        "date": "2026-03-05 08:30:00", "amount": "12.5"},
    7: {"event_id": "T-1", "village_code": "632522100201", "start_time": "2026-03-01T06:00:00Z",
        "end_time": None},
    8: {"event_id": "T-2", "village_code": "632522100202", "start_time": "2026-03-01 06:00",
        "end_time": "2026-03-04 18:30"},
    9: {"hh": {"id": "632522100201002", "village": "632522100201", "category": "边缘易致贫户",
               "head": "李四", "members": ["632522198503030031"], "income": 700000}},
}


def csv_text(rec):
    flat = {k: v for k, v in rec.items() if not isinstance(v, (dict, list))}
    cells = ["" if v is None else str(v) for v in flat.values()]
    quoted = ['"%s"' % c if "," in c else c for c in cells]
    return ",".join(flat) + "\r\n" + ",".join(quoted) + "\r\n" + ",".join(flat) + "\n"


def decoder_seeds():
    seeds = {"decode_json": {}, "decode_ndjson": {}, "decode_csv": {}}
    for m, rec in RECORDS.items():
        gbk = m in (5, 9)
        bom = m in (1, 5)
        paths = m % 3
        if paths == 0:
            doc = {"records": [rec, {"record_id": None}], "next": "c-%d" % m}
        elif paths == 1:
            doc = {"data": {"items": [rec], "next": m}}
        else:
            doc = [rec]
        seeds["decode_json"]["seed-%d" % m] = bytes([options(gbk, bom, m, paths)]) + body(
            json.dumps(doc, ensure_ascii=False), gbk)
        lines = json.dumps(rec, ensure_ascii=False) + "\n\n{broken\n[1]\n"
        seeds["decode_ndjson"]["seed-%d" % m] = bytes([options(gbk, bom, m)]) + body(lines, gbk)
        seeds["decode_csv"]["seed-%d" % m] = bytes([options(gbk, bom, m)]) + body(
            csv_text(rec), gbk)
    return seeds


CONFIG = """[daemon]
data_dir = "data"
listen = "127.0.0.1:9187"
evaluation_interval = "30s"
retention_months = 24
language = "en"

[[feeds]]
name = "roster"
department = "乡村振兴"
kind = "roster"
url = "https://roster.example.invalid/api/households"
schedule = "0 0 2 * * *"
timeout = "120s"
page_size = 2000
auth = { type = "bearer", token_env = "ROSTER_TOKEN" }
[feeds.map]
record_id = "record_id"
household = "hh_id"
village = "village_code"
category = "category"
head_name = "head_name"
members = "members"
member_id = "id_number"
income_per_capita = "income_per_capita"

[[feeds]]
name = "housing"
kind = "events"
dir = "drop/housing"
schedule = "0 */10 * * * MON-FRI"
format = "csv"
encoding = "gbk"
[feeds.map]
record_id = "记录编号"
household = "户编号"
time = "鉴定日期"
event_field = "鉴定等级"
event_values = { C = "house_unsafe", D = "house_unsafe" }

[[receivers]]
name = "log"
type = "file"
path = "notifications.log"

[[receivers]]
name = "hook"
type = "webhook"
url = "http://127.0.0.1:1/hook"
bearer_env = "HOOK_TOKEN"

[route]
receivers = ["log"]
group_by = ["county"]
group_wait = "4s"
[[route.routes]]
matchers = ['severity="critical"', 'county=~"63.*"']
receivers = ["hook"]
continue = true

[[inhibit]]
source_matchers = ['rule="county_relapse_surge"']
target_matchers = ['severity="warning"']
equal = ["county"]

[[lines]]
name = "monitoring_income"
year = 2026
region = "63"
value = 7800
"""


def strip_comments(text):
    return "".join(l for l in text.splitlines(keepends=True) if not l.lstrip().startswith("#"))


def main():
    seeds = decoder_seeds()
    seeds["config"] = {"seed-full": CONFIG.encode(),
                       "seed-minimal": b"[notify]\nreceivers = []\n"}
    seeds["rules"] = {
        "seed-" + name: strip_comments((ROOT / "alerts" / (name + ".toml")).read_text()).encode()
        for name in ["civil", "water", "income", "county", "lines", "disaster"]
    }
    for target, files in seeds.items():
        d = CORPUS / target
        d.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (d / name).write_bytes(data)


if __name__ == "__main__":
    main()
