"""bench: measure this machine (matmul peaks, bandwidth, energy, training and inference speed) and
turn the measurements into the planner's calibration file.

Every benchmark returns a versioned record (:mod:`hwlm.bench.records`) that is written as JSON;
``compare`` sets two records side by side and ``calibrate`` turns records into efficiencies.
torch is imported inside the measuring functions, so importing this package stays cheap.
"""

from hwlm.bench.energy import EnergyMeter, EnergyResult, NvmlEnergy, RaplReader
from hwlm.bench.peak import PeakConfig, format_peak, run_peak
from hwlm.bench.records import RECORD_KIND, RECORD_VERSION, load_record, make_record, spread, write_record

__all__ = [
    "EnergyMeter", "EnergyResult", "NvmlEnergy", "RaplReader",
    "PeakConfig", "format_peak", "run_peak",
    "RECORD_KIND", "RECORD_VERSION", "load_record", "make_record", "spread", "write_record",
]
