"""`egressgw review`: one self-contained HTML report from flow logs.

aggregate.py  one streaming pass over the events (bounded memory)
charts.py     inline SVG charts
integrity.py  the verdict of `log verify`
report.py     the HTML (templates/: page skeleton and CSS)
"""
