"""HCCL rank tables (Ascend, the model-zoo launch contract): validation and this host's ranks.

A rank table (written by the zoo's `hccl_tools.py`, merged across servers by `merge_hccl.py`) looks like

    {"version": "1.0", "server_count": "1", "status": "completed",
     "server_list": [{"server_id": "10.0.0.1", "host_nic_ip": "reserve",
                      "device": [{"device_id": "0", "device_ip": "192.168.100.101", "rank_id": "0"}, ...]}]}

`load_rank_table` checks every field the launcher relies on and raises ONE UserError naming the field:
version, server_count == len(server_list), non-empty device lists, device_id / rank_id as integer strings,
device_ip as an IPv4 address, device ids unique per server, rank ids unique and contiguous 0..N-1.

`local_ranks` picks this host's server (its `server_id` is one of this host's addresses, or the only server)
and returns (rank_id, device_id) per local device: the rank comes from the table, NOT from
`device_id % device_num` as in the zoo's script (which gives every server ranks 0..7 on multi-node jobs).

Command line (used by scripts/run_distributed_*_ascend.sh):
    python -m src.rank_table RANK_TABLE_FILE --device_num 8 [--host_ips "10.0.0.1 ..."]
prints `RANK_SIZE <n>` then one `<rank_id> <device_id>` line per local device, or `ERROR: ...` and exits 2.
"""
import argparse
import ipaddress
import json
import os
import socket
import sys
from typing import List, Optional, Sequence, Tuple

from src.errors import UserError, run_main
from src.fileio import read_errors

VERSIONS = ("1.0", "1.2")


def _int_str(value, field: str, where: str) -> int:
    """Rank tables store integers as strings ("0"); plain JSON integers are accepted too."""
    if isinstance(value, bool) or not isinstance(value, (str, int)) or not str(value).isdigit():
        raise UserError(f"{where}: {field} {value!r}: expected a non-negative integer string like \"0\"")
    return int(value)


def validate_rank_table(table, source: str = "rank table") -> dict:
    """The table itself if valid, else UserError naming the first bad field."""
    if not isinstance(table, dict):
        raise UserError(f"{source}: expected a JSON object with version, server_count, server_list")
    version = table.get("version")
    if version not in VERSIONS:
        raise UserError(f"{source}: version {version!r}: expected one of {', '.join(VERSIONS)}")
    if "status" in table and table["status"] != "completed":
        raise UserError(f"{source}: status {table['status']!r}: expected \"completed\" (table still being built?)")
    servers = table.get("server_list")
    if not isinstance(servers, list) or not servers:
        raise UserError(f"{source}: server_list: expected a non-empty list of servers")
    if "server_count" not in table:
        raise UserError(f"{source}: server_count missing")
    count = _int_str(table["server_count"], "server_count", source)
    if count != len(servers):
        raise UserError(f"{source}: server_count {count} but server_list has {len(servers)} server(s)")
    ranks = {}
    server_ids = set()
    for s, server in enumerate(servers):
        where = f"{source}: server_list[{s}]"
        if not isinstance(server, dict):
            raise UserError(f"{where}: expected an object with server_id and device")
        sid = server.get("server_id")
        if not isinstance(sid, str) or not sid:
            raise UserError(f"{where}.server_id {sid!r}: expected the server's IP address as a string")
        if sid in server_ids:
            raise UserError(f"{where}.server_id '{sid}' appears twice")
        server_ids.add(sid)
        devices = server.get("device")
        if not isinstance(devices, list) or not devices:
            raise UserError(f"{where}.device: expected a non-empty list of devices")
        device_ids = set()
        for d, dev in enumerate(devices):
            dwhere = f"{where}.device[{d}]"
            if not isinstance(dev, dict):
                raise UserError(f"{dwhere}: expected an object with device_id, device_ip, rank_id")
            for key in ("device_id", "device_ip", "rank_id"):
                if key not in dev:
                    raise UserError(f"{dwhere}.{key} missing")
            device_id = _int_str(dev["device_id"], "device_id", dwhere)
            rank_id = _int_str(dev["rank_id"], "rank_id", dwhere)
            try:
                ipaddress.IPv4Address(str(dev["device_ip"]))
            except ValueError:
                raise UserError(f"{dwhere}.device_ip {dev['device_ip']!r}: expected an IPv4 address") from None
            if device_id in device_ids:
                raise UserError(f"{dwhere}.device_id {device_id} appears twice on server '{sid}'")
            device_ids.add(device_id)
            if rank_id in ranks:
                raise UserError(f"{dwhere}.rank_id {rank_id} already used by {ranks[rank_id]}")
            ranks[rank_id] = dwhere.split(": ", 1)[-1]
    missing = sorted(set(range(len(ranks))) - set(ranks))
    if missing:
        raise UserError(f"{source}: rank_id values must be 0..{len(ranks) - 1} without gaps; missing {missing}")
    return table


def load_rank_table(path: str) -> dict:
    if not path:
        raise UserError("RANK_TABLE_FILE: no path given")
    if not os.path.isfile(path):
        raise UserError(f"RANK_TABLE_FILE '{path}' does not exist")
    try:
        with read_errors(f"RANK_TABLE_FILE '{path}'"), open(path, encoding="utf-8") as f:
            table = json.load(f)
    except OSError as e:
        raise UserError(f"RANK_TABLE_FILE '{path}' cannot be read: {e}") from None
    return validate_rank_table(table, f"RANK_TABLE_FILE '{path}'")


def rank_size(table: dict) -> int:
    return sum(len(s["device"]) for s in table["server_list"])


def local_ranks(table: dict, host_ips: Sequence[str] = (), device_num: Optional[int] = None,
                source: str = "rank table") -> List[Tuple[int, int]]:
    """(rank_id, device_id) for the devices of this host's server, in device order."""
    servers = table["server_list"]
    if len(servers) == 1:
        server = servers[0]
    else:
        match = [s for s in servers if s["server_id"] in set(host_ips)]
        if len(match) != 1:
            raise UserError(f"{source}: none of this host's addresses {sorted(set(host_ips))} is a server_id of "
                            f"server_list ({', '.join(s['server_id'] for s in servers)}); set SERVER_ID")
        server = match[0]
    pairs = sorted(((int(d["rank_id"]), int(d["device_id"])) for d in server["device"]), key=lambda p: p[1])
    if device_num is not None and device_num != len(pairs):
        raise UserError(f"DEVICE_NUM {device_num}: {source} lists {len(pairs)} device(s) for server "
                        f"'{server['server_id']}'")
    return pairs


def host_addresses() -> List[str]:
    """This host's IPv4 addresses as far as the standard library can tell (the scripts add `hostname -I`)."""
    names = {socket.gethostname(), socket.getfqdn()}
    out = set()
    for name in names:
        try:
            out.update(socket.gethostbyname_ex(name)[2])
        except OSError:
            pass
    return sorted(out)


def main(argv=None):
    p = argparse.ArgumentParser(description="Validate an HCCL rank table and print this host's ranks")
    p.add_argument("rank_table")
    p.add_argument("--device_num", type=int, default=None, help="devices this host must have in the table")
    p.add_argument("--host_ips", default="", help="this host's addresses, space separated (or SERVER_ID)")
    args = p.parse_args(argv)
    table = load_rank_table(args.rank_table)
    ips = args.host_ips.split() + host_addresses()
    pairs = local_ranks(table, ips, args.device_num, f"RANK_TABLE_FILE '{args.rank_table}'")
    print(f"RANK_SIZE {rank_size(table)}")
    for rank_id, device_id in pairs:
        print(f"{rank_id} {device_id}")
    return 0


if __name__ == "__main__":
    run_main(main, sys.argv[1:])
