"""hinotori (火の鳥, the phoenix): Immutable Infrastructure in practice.

Never patch a live host: bake an image, prove it, boot fresh hosts from it, move traffic to them
without dropping a request, burn the old ones. See docs/DESIGN.md for the architecture.
"""

__version__ = "0.1.0"
