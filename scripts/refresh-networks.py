#!/usr/bin/env python3
"""Re-fetch the vendors' published address lists and rewrite config/networks/*.toml.

For operators whose machine can reach the vendors: every list named below is fetched
from the vendor's own URL, parsed, checked, and written into the catalogue file that uses
it. Only the entries that came from that source are replaced; other entries (ASNs, other
sources), the set's name, purpose and notes stay as they are, and the source's
`retrieved` date becomes today's date (or --date).

A list that cannot be fetched, does not parse, comes back empty, or shrinks by more than
--max-shrink of its previous size (an error page, a truncated download) leaves its files
untouched and is reported on stderr; the exit status is 1 when any source failed.

Python 3.11 or newer, standard library only.

    scripts/refresh-networks.py                      # every source, into config/networks/
    scripts/refresh-networks.py --only aws-ip-ranges --only apple-egress-csv
    scripts/refresh-networks.py --list               # the sources and the files they feed
    scripts/refresh-networks.py --base-url http://127.0.0.1:8080   # a mirror / test server:
        # https://HOST/PATH is fetched as BASE/HOST/PATH
    scripts/refresh-networks.py --url aws-ip-ranges=https://mirror.example/ip-ranges.json
"""

from __future__ import annotations

import argparse
import csv
import datetime
import html
import io
import ipaddress
import json
import os
import re
import sys
import tempfile
import tomllib
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Callable

USER_AGENT = "trackedge-refresh-networks/1 (+https://github.com/trackedge)"


class SourceError(Exception):
    """A list that must not be written (fetch, parse or sanity failure)."""


# --- parsers: bytes of each fetched URL -> CIDR strings ----------------------------------


def _json(body: bytes, url: str):
    text = body.decode("utf-8-sig", errors="strict")
    if text.lstrip().startswith("<"):
        raise SourceError(f"{url} returned HTML, not JSON")
    try:
        return json.loads(text)
    except json.JSONDecodeError as err:
        raise SourceError(f"{url} is not valid JSON: {err}") from None


def parse_prefixes_json(bodies, urls, _opts):
    """Google/Bing/Apple/OpenAI/Perplexity/DuckDuckGo style: {"prefixes": [{"ipv4Prefix"|"ipv6Prefix"}]}."""
    out = []
    for body, url in zip(bodies, urls):
        doc = _json(body, url)
        prefixes = doc.get("prefixes") if isinstance(doc, dict) else None
        if not isinstance(prefixes, list):
            raise SourceError(f"{url} has no 'prefixes' list")
        for entry in prefixes:
            if not isinstance(entry, dict):
                raise SourceError(f"{url}: a 'prefixes' entry is not an object")
            out += [entry[k] for k in ("ipv4Prefix", "ipv6Prefix") if k in entry]
    return out


def parse_aws(bodies, urls, _opts):
    (body,), (url,) = bodies, urls
    doc = _json(body, url)
    if not isinstance(doc, dict) or "prefixes" not in doc:
        raise SourceError(f"{url} has no 'prefixes' list")
    out = [p["ip_prefix"] for p in doc.get("prefixes", []) if "ip_prefix" in p]
    out += [p["ipv6_prefix"] for p in doc.get("ipv6_prefixes", []) if "ipv6_prefix" in p]
    return out


def parse_o365(bodies, urls, opts):
    """endpoints.office.com: a list of endpoint sets; opts["ids"] picks the sets."""
    (body,), (url,) = bodies, urls
    doc = _json(body, url)
    if not isinstance(doc, list):
        raise SourceError(f"{url} is not a list of endpoint sets")
    wanted = set(opts["ids"])
    found = {e.get("id") for e in doc if isinstance(e, dict)} & wanted
    if found != wanted:
        raise SourceError(f"{url} lacks endpoint set(s) {sorted(wanted - found)}")
    return [ip for e in doc if isinstance(e, dict) and e.get("id") in wanted for ip in e.get("ips", [])]


def parse_oci(bodies, urls, _opts):
    (body,), (url,) = bodies, urls
    doc = _json(body, url)
    if not isinstance(doc, dict) or not isinstance(doc.get("regions"), list):
        raise SourceError(f"{url} has no 'regions' list")
    return [c["cidr"] for r in doc["regions"] for c in r.get("cidrs", []) if "cidr" in c]


def parse_gcp(bodies, urls, opts):
    return parse_prefixes_json(bodies, urls, opts)


def parse_azure(bodies, urls, _opts):
    (body,), (url,) = bodies, urls
    doc = _json(body, url)
    if not isinstance(doc, dict) or not isinstance(doc.get("values"), list):
        raise SourceError(f"{url} has no 'values' list (not a ServiceTags file)")
    return [p for v in doc["values"] for p in v.get("properties", {}).get("addressPrefixes", [])]


def parse_first_column(bodies, urls, _opts):
    """Geofeeds (RFC 8805) and Apple's egress CSV: the prefix is the first column."""
    out = []
    for body, url in zip(bodies, urls):
        text = body.decode("utf-8-sig", errors="strict")
        if text.lstrip().lower().startswith(("<!doctype", "<html")):
            raise SourceError(f"{url} returned HTML, not CSV")
        for row in csv.reader(io.StringIO(text)):
            if row and row[0].strip() and not row[0].lstrip().startswith("#"):
                out.append(row[0].strip())
    return out


def parse_plain_list(bodies, urls, _opts):
    """One address or prefix per line (blank lines and # comments ignored)."""
    out = []
    for body, url in zip(bodies, urls):
        text = body.decode("utf-8-sig", errors="strict")
        if text.lstrip().lower().startswith(("<!doctype", "<html")):
            raise SourceError(f"{url} returned HTML, not a list")
        for line in text.splitlines():
            line = line.split("#", 1)[0].strip()
            out += [tok for tok in re.split(r"[\s,;]+", line) if tok]
    return out


@dataclass
class Source:
    urls: list[str]
    parse: Callable
    targets: list[tuple[str, dict]]  # (network file stem, parser options)
    what: str
    follow_html_link: str | None = None  # a regex: the URL is a page linking to the file
    fetched: list[bytes] = field(default_factory=list)


GOOGLE = "https://developers.google.com/static/crawling/ipranges/"
O365 = "https://endpoints.office.com/endpoints/worldwide?clientrequestid=b10c5ed1-bad1-445f-b386-b919946339a7"

SOURCES: dict[str, Source] = {
    "apple-egress-csv": Source(
        ["https://mask-api.icloud.com/egress-ip-ranges.csv"], parse_first_column,
        [("apple-private-relay-egress", {})], "column 1 (egress prefix) of every row, IPv4 and IPv6"),
    "applebot-json": Source(
        ["https://search.developer.apple.com/applebot.json"], parse_prefixes_json,
        [("apple-applebot", {})], "every prefix"),
    "google-common-crawlers-json": Source(
        [GOOGLE + "common-crawlers.json"], parse_prefixes_json,
        [("google-crawlers", {})], "prefixes[].ipv4Prefix/ipv6Prefix"),
    "google-special-crawlers-json": Source(
        [GOOGLE + "special-crawlers.json"], parse_prefixes_json,
        [("google-special-crawlers", {})], "prefixes[].ipv4Prefix/ipv6Prefix"),
    "google-user-triggered-json": Source(
        [GOOGLE + "user-triggered-fetchers.json", GOOGLE + "user-triggered-fetchers-google.json"],
        parse_prefixes_json, [("google-user-triggered-fetchers", {})],
        "prefixes of user-triggered-fetchers.json and user-triggered-fetchers-google.json"),
    "gcp-cloud-json": Source(
        ["https://www.gstatic.com/ipranges/cloud.json"], parse_gcp,
        [("google-cloud", {})], "prefixes[].ipv4Prefix/ipv6Prefix of every scope"),
    "ms-o365-endpoints": Source(
        [O365], parse_o365,
        [("microsoft-eop", {"ids": [10]}), ("microsoft-exchange-online", {"ids": [1]})],
        "ips of the endpoint set(s) named in the file (set 10: *.mail.protection.outlook.com; set 1: outlook.office.com)"),
    "bingbot-json": Source(
        ["https://www.bing.com/toolbox/bingbot.json"], parse_prefixes_json,
        [("microsoft-bingbot", {})], "prefixes[].ipv4Prefix"),
    "azure-service-tags": Source(
        ["https://www.microsoft.com/en-us/download/details.aspx?id=56519"], parse_azure,
        [("microsoft-azure", {})], "values[].properties.addressPrefixes of ServiceTags_Public",
        follow_html_link=r"https://download\.microsoft\.com/[^\"']*ServiceTags_Public_[0-9]+\.json"),
    "aws-ip-ranges": Source(
        ["https://ip-ranges.amazonaws.com/ip-ranges.json"], parse_aws,
        [("aws", {})], "prefixes[].ip_prefix and ipv6_prefixes[].ipv6_prefix, all services and regions"),
    "oci-ranges": Source(
        ["https://docs.oracle.com/en-us/iaas/tools/public_ip_ranges.json"], parse_oci,
        [("oracle-cloud", {})], "regions[].cidrs[].cidr"),
    "do-geofeed": Source(
        ["https://www.digitalocean.com/geo/google.csv"], parse_first_column,
        [("digitalocean", {})], "column 1 (prefix) of every row"),
    "linode-geofeed": Source(
        ["https://geoip.linode.com/"], parse_first_column,
        [("linode-akamai", {})], "column 1 (prefix) of every row"),
    "vultr-geofeed": Source(
        ["https://geofeed.constant.com/?text"], parse_first_column,
        [("vultr", {})], "column 1 (prefix) of every row"),
    "openai-json": Source(
        ["https://openai.com/gptbot.json", "https://openai.com/searchbot.json", "https://openai.com/chatgpt-user.json"],
        parse_prefixes_json, [("openai-bots", {})], "prefixes of gptbot.json, searchbot.json and chatgpt-user.json"),
    "perplexity-json": Source(
        ["https://www.perplexity.ai/perplexitybot.json", "https://www.perplexity.ai/perplexity-user.json"],
        parse_prefixes_json, [("perplexity-bots", {})], "prefixes of perplexitybot.json and perplexity-user.json"),
    "duckduckbot-json": Source(
        ["https://duckduckgo.com/duckduckbot.json"], parse_prefixes_json,
        [("duckduckgo-bots", {})], "prefixes"),
    "telegram-cidr": Source(
        ["https://core.telegram.org/resources/cidr.txt"], parse_plain_list,
        [("telegram", {})], "every prefix"),
    "uptimerobot-ips": Source(
        ["https://uptimerobot.com/inc/files/ips/IPv4andIPv6.txt"], parse_plain_list,
        [("uptimerobot", {})], "every address"),
    "pingdom-probes": Source(
        ["https://my.pingdom.com/probes/ipv4", "https://my.pingdom.com/probes/ipv6"], parse_plain_list,
        [("pingdom", {})], "IPv4 and IPv6 probe addresses"),
    "statuscake-locations": Source(
        ["https://app.statuscake.com/Workfloor/Locations.php?format=txt"], parse_plain_list,
        [("statuscake", {})], "every address"),
    "betterstack-ips": Source(
        ["https://uptime.betterstack.com/ips.txt"], parse_plain_list,
        [("betterstack", {})], "every address"),
}


# --- fetching ----------------------------------------------------------------------------


def effective_url(url: str, base: str | None) -> str:
    if not base:
        return url
    parts = urllib.parse.urlsplit(url)
    tail = parts.netloc + parts.path + (("?" + parts.query) if parts.query else "")
    return base.rstrip("/") + "/" + tail


def fetch(url: str, timeout: float) -> bytes:
    request = urllib.request.Request(url, headers={"User-Agent": USER_AGENT})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310 (the operator's URLs)
            return response.read(64 * 1024 * 1024 + 1)[: 64 * 1024 * 1024]
    except urllib.error.HTTPError as err:
        raise SourceError(f"{url}: HTTP {err.code} {err.reason}") from None
    except (urllib.error.URLError, OSError, TimeoutError) as err:
        raise SourceError(f"{url}: {getattr(err, 'reason', err)}") from None


def fetch_source(source_id: str, source: Source, overrides: dict, base: str | None, timeout: float) -> tuple[list[bytes], list[str]]:
    urls = overrides.get(source_id, source.urls)
    bodies = []
    for url in urls:
        body = fetch(effective_url(url, base), timeout)
        if source.follow_html_link and source_id not in overrides:
            match = re.search(source.follow_html_link, body.decode("utf-8", errors="replace"))
            if not match:
                raise SourceError(f"{url}: no link matching {source.follow_html_link!r} on the page")
            body = fetch(effective_url(html.unescape(match.group(0)), base), timeout)
        bodies.append(body)
    return bodies, urls


# --- catalogue files -------------------------------------------------------------------


def collapse(cidrs: list[str], where: str) -> list[str]:
    nets = []
    for raw in cidrs:
        try:
            nets.append(ipaddress.ip_network(str(raw).strip(), strict=False))
        except ValueError:
            raise SourceError(f"{where}: {raw!r} is not an IP prefix") from None
    v4 = ipaddress.collapse_addresses(n for n in nets if n.version == 4)
    v6 = ipaddress.collapse_addresses(n for n in nets if n.version == 6)
    return [str(n) for n in [*v4, *v6]]


def q(value: str) -> str:
    return json.dumps(value, ensure_ascii=True)


def render(doc: dict, asn_comments: dict[int, str], header: list[str]) -> str:
    lines = list(header)
    for key in ("name", "vendor", "purpose", "notes"):
        lines.append(f"{key} = {q(doc[key])}")
    if doc.get("datacenter") is True:
        lines.append("datacenter = true")
    lines.append("")
    if doc.get("cidrs"):
        lines.append("cidrs = [")
        lines += [f"  {{ cidr = {q(c['cidr'])}, source = {q(c['source'])} }}," for c in doc["cidrs"]]
        lines.append("]")
    if doc.get("asns"):
        lines.append("asns = [")
        for a in doc["asns"]:
            comment = f"  # {asn_comments[a['asn']]}" if a["asn"] in asn_comments else ""
            lines.append(f"  {{ asn = {int(a['asn'])}, source = {q(a['source'])} }},{comment}")
        lines.append("]")
    lines.append("")
    lines.append("# Where the lists above come from (TOML: these tables must follow the top-level lists).")
    for s in doc["sources"]:
        lines += ["[[sources]]", f"id = {q(s['id'])}", f"url = {q(s['url'])}",
                  f"retrieved = {q(s['retrieved'])}", f"what = {q(s['what'])}", ""]
    return "\n".join(lines).rstrip("\n") + "\n"


def rewrite(path: str, source_id: str, canonical_url: str, what: str, cidrs: list[str], date: str, max_shrink: float) -> tuple[int, int]:
    raw = open(path, encoding="utf-8").read()
    try:
        doc = tomllib.loads(raw)
    except tomllib.TOMLDecodeError as err:
        raise SourceError(f"{path} is not valid TOML: {err}") from None
    for key in ("name", "vendor", "purpose", "notes", "sources"):
        if key not in doc:
            raise SourceError(f"{path} lacks '{key}'")
    header = []
    for line in raw.splitlines():
        if not line.startswith("#"):
            break
        header.append(line)
    asn_comments = {int(m.group(1)): m.group(2).strip() for m in re.finditer(r"asn\s*=\s*(\d+)[^\n#]*#\s*([^\n]+)", raw)}
    old = [c for c in doc.get("cidrs", []) if c.get("source") == source_id]
    if old and len(cidrs) < len(old) * (1 - max_shrink):
        raise SourceError(f"{len(cidrs)} prefixes against {len(old)} before: refusing a shrink above {max_shrink:.0%} (use --max-shrink 1 to accept)")
    kept = [c for c in doc.get("cidrs", []) if c.get("source") != source_id]
    doc["cidrs"] = [{"cidr": c, "source": source_id} for c in cidrs] + kept
    ours = [s for s in doc["sources"] if s.get("id") == source_id]
    if ours:
        ours[0].update(url=canonical_url, retrieved=date, what=f"{what} (fetched by scripts/refresh-networks.py)")
    else:
        doc["sources"].append({"id": source_id, "url": canonical_url, "retrieved": date,
                               "what": f"{what} (fetched by scripts/refresh-networks.py)"})
    text = render(doc, asn_comments, header)
    tomllib.loads(text)  # never write what cannot be read back
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), prefix=".refresh-", suffix=".toml")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise
    return len(old), len(cidrs)


def main(argv: list[str]) -> int:
    here = os.path.dirname(os.path.abspath(__file__))
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--networks-dir", default=os.path.join(here, "..", "config", "networks"))
    parser.add_argument("--base-url", help="fetch https://HOST/PATH as BASE/HOST/PATH (a mirror or a test server)")
    parser.add_argument("--url", action="append", default=[], metavar="SOURCE=URL",
                        help="fetch SOURCE from URL instead (repeat; a source with several lists takes URL1,URL2)")
    parser.add_argument("--only", action="append", default=[], metavar="SOURCE", help="refresh only these sources")
    parser.add_argument("--date", default=datetime.datetime.now(datetime.timezone.utc).date().isoformat(),
                        help="retrieval date to record (default: today, UTC)")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    parser.add_argument("--max-shrink", type=float, default=0.5,
                        help="refuse a list that lost more than this fraction of its prefixes (default 0.5)")
    parser.add_argument("--list", action="store_true", help="print the sources and the files they feed")
    args = parser.parse_args(argv)

    if args.list:
        for sid, s in SOURCES.items():
            print(f"{sid}\t{' '.join(s.urls)}\t-> {', '.join(t for t, _ in s.targets)}")
        return 0
    if not re.fullmatch(r"\d{4}-\d{2}-\d{2}", args.date):
        parser.error("--date must be YYYY-MM-DD")
    overrides = {}
    for item in args.url:
        sid, sep, url = item.partition("=")
        if not sep or sid not in SOURCES:
            parser.error(f"--url wants SOURCE=URL with SOURCE one of: {', '.join(SOURCES)}")
        overrides[sid] = url.split(",")
    unknown = [s for s in args.only if s not in SOURCES]
    if unknown:
        parser.error(f"unknown source(s) {', '.join(unknown)}; --list shows them")

    failures = 0
    for sid in args.only or list(SOURCES):
        source = SOURCES[sid]
        targets = [(t, o, os.path.join(args.networks_dir, t + ".toml")) for t, o in source.targets]
        missing = [p for _, _, p in targets if not os.path.exists(p)]
        if missing:
            print(f"error: {sid}: {', '.join(missing)} not found; nothing written", file=sys.stderr)
            failures += 1
            continue
        try:
            bodies, urls = fetch_source(sid, source, overrides, args.base_url, args.timeout)
        except SourceError as err:
            print(f"error: {sid}: {err}; {', '.join(p for _, _, p in targets)} left unchanged", file=sys.stderr)
            failures += 1
            continue
        for stem, opts, path in targets:
            try:
                cidrs = collapse(source.parse(bodies, urls, opts), sid)
                if not cidrs:
                    raise SourceError("the list is empty")
                what = source.what if len(source.urls) == 1 else f"{source.what}; lists: {' '.join(source.urls)}"
                before, after = rewrite(path, sid, source.urls[0], what, cidrs, args.date, args.max_shrink)
            except (SourceError, UnicodeDecodeError, KeyError, TypeError) as err:
                print(f"error: {sid}: {err}; {path} left unchanged", file=sys.stderr)
                failures += 1
                continue
            print(f"{sid}: {stem}: {before} -> {after} prefixes")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
