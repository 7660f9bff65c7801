"""The CPU this runs on, from /proc/cpuinfo (Linux; empty elsewhere): for the machine line of result tables."""
import platform


def cpuinfo() -> dict:
    """The first value of every key of /proc/cpuinfo (the first processor's), or {} where it cannot be read."""
    out = {}
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if ":" in line:
                    k, v = line.split(":", 1)
                    out.setdefault(k.strip(), v.strip())
    except OSError:
        pass
    return out


def cpu_model(info: dict = None) -> str:
    info = cpuinfo() if info is None else info
    return info.get("model name", platform.processor() or "unknown")
