"""Example tokenomy extension, registered through the entry point ``tokenomy.extensions``."""

from .detectors import detect_over_retrieval
from .energy import KIND, EnergySettings, check_energy, energy_market, meter_energy
from .retrieval import Retrieval
from .substitutes import SubstitutesCurve, substitutes_effort


def register(registry):
    """Add the energy-cap market, the retrieval layer, the curve family and the detector."""
    registry.add_market_kind(KIND, energy_market, settings=EnergySettings, meter=meter_energy,
                             check=check_energy, description="energy cap (kWh per period)")
    registry.add_layer(Retrieval)
    registry.add_curve_family(SubstitutesCurve, substitutes_effort)
    registry.add_detector("over-retrieval", detect_over_retrieval)
