"""`inputs.item_text`: an item as the one line `recommend.py --with_text` writes."""

from recformer.inference.inputs import item_text


def test_item_text_joins_values_in_order_and_leaves_out_empty_ones():
    item = {"title": "Solder wire  60/40\n", "brand": "", "category": ["Tools", "Solder"], "year": 1999, "x": None}
    assert item_text(item) == "Solder wire 60/40 | Tools Solder | 1999"
    assert item_text({}) == ""
