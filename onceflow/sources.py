"""Built-in replayable sources and the base classes for your own."""

from onceflow.connectors.datagen import DataGen
from onceflow.connectors.sources import Collection, Range, Source, SplitReader, TextFiles

__all__ = ["Collection", "DataGen", "Range", "Source", "SplitReader", "TextFiles"]
