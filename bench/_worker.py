"""One measured run in a fresh process: ``python -m bench._worker '<spec as JSON>'``.

The spec names the scenario function, the contender and the parameters; ``"otel": true``
installs the OpenTelemetry SDK first. The result is printed as one line of JSON.
"""

from __future__ import annotations

import json
import sys


def main(argv: list[str]) -> int:
    spec = json.loads(argv[1])
    from . import _scenarios

    if spec.get("otel"):
        _scenarios.configure_otel_sdk()
    scenario = _scenarios.SCENARIOS[spec["scenario"]]
    result = scenario(spec["contender"], **spec["params"])
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
