"""`kerasport parity --explain`: where a candidate starts to differ from Keras, layer by layer, and for int8
artifacts the fixes for the costliest layers, tried and measured (`layers` runs it; `graph`, `runtime` and `match`
give the Keras side, the candidate side and which tensor is which; `int8` the fixes)."""
