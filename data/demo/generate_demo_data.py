"""Generate the bundled demo dataset in the raw Amazon Review Data (2018) formats.

The data imitates real shopping data closely enough that a text-based sequential recommender has something
to learn and a popularity ranking does not:

* items belong to themes (photography, coffee, aquarium, ...) made of product kinds ("camera", "camera lens",
  "memory card", ...); titles are "<brand> <tier> <attribute> <noun>", categories are multi-level lists, so
  related items share words;
* brands make several kinds of one theme; users have favourite themes, brands and a price tier;
* a sequence starts at an anchor product and mostly moves to complementary kinds (camera -> lens -> lens
  filter), usually of the same brand, with some theme switches and some random purchases;
* item popularity is fairly flat (no item dominates), so ranking by popularity is weak.

It also carries the mess of the real files, which the readers must survive: HTML entities (``&amp;``), items
without brand, with an empty category list, duplicate meta lines (the later wins), lines in the old Python
literal format, broken and blank lines, lines missing fields, reviews of items with no metadata, and review
times that tie (times are whole days, as in the real data).

Output layout (see data/demo/README.md)::

    raw/finetune/Demo_5.json.gz, raw/finetune/meta_Demo.json.gz
    raw/pretrain/<Category>_5.json.gz, raw/pretrain/meta_<Category>.json.gz   (8 categories)

The output is the same byte for byte on every run (fixed seed, gzip header time 0). Regenerate with::

    python data/demo/generate_demo_data.py
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import random
import string
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

DEFAULT_SEED = 20230806
DAY = 86400
FINETUNE_CATEGORY = "Demo"
FINETUNE_ROOT = "Hobbies &amp; Leisure"
FINETUNE_THEMES = (
    "Photography", "Coffee Brewing", "Aquarium", "Gardening", "Fitness",
    "Guitar", "Baking", "Camping", "Painting", "Cycling",
)  # fmt: skip
FINETUNE_USERS = 1400

# category -> (root category string, themes, number of users); the order is the paper's.
PRETRAIN_CATEGORIES = {
    "Automotive": ("Automotive", ("Car Care", "Car Electronics", "Garage Tools"), 200),
    "Cell_Phones_and_Accessories": (
        "Cell Phones &amp; Accessories",
        ("Phone Protection", "Charging", "Mobile Audio"),
        200,
    ),
    "Clothing_Shoes_and_Jewelry": (
        "Clothing, Shoes &amp; Jewelry",
        ("Running Apparel", "Outdoor Apparel", "Jewelry"),
        200,
    ),
    "Electronics": ("Electronics", ("Home Audio", "Computer Accessories", "Charging"), 220),
    "Grocery_and_Gourmet_Food": (
        "Grocery &amp; Gourmet Food",
        ("Coffee &amp; Tea", "Snacks", "Pantry Baking"),
        200,
    ),
    "Home_and_Kitchen": ("Home &amp; Kitchen", ("Cookware", "Coffee Brewing", "Bedding"), 200),
    "Movies_and_TV": (
        "Movies &amp; TV",
        ("Sci-Fi &amp; Fantasy", "Drama", "Kids &amp; Family", "Documentary"),
        180,
    ),
    "CDs_and_Vinyl": ("CDs &amp; Vinyl", ("Rock", "Jazz", "Classical", "Pop"), 160),
}
MEDIA_CATEGORIES = ("Movies_and_TV", "CDs_and_Vinyl")

# Product themes: "THEME <name> | <department>", then one line per kind:
# "<kind> | <category levels below the department, '>'-separated> | <nouns ';'> | <attributes ','> | <next kinds ','>"
# A next kind may name another theme's kind as "<theme>/<kind>" (a cross-category purchase).
# The first two kinds of a theme are its anchors: where a user's visit to the theme starts.
THEMES = """
THEME Photography | Camera &amp; Photo
camera | Digital Cameras > Mirrorless Cameras | Mirrorless Camera Body; Digital Camera with Kit Lens | 24MP, 20MP, 4K Video, Full Frame, Weather Sealed | camera lens, memory card, camera bag, tripod
camera lens | Lenses > Camera Lenses | 50mm f/1.8 Prime Lens; 18-55mm Zoom Lens; 70-300mm Telephoto Lens | Autofocus, Image Stabilized, Compact, Macro | lens filter, camera bag, memory card
memory card | Accessories > Memory Cards | SD Memory Card; microSDXC Memory Card | 64GB, 128GB, 256GB, UHS-II V30 | camera battery, camera bag
tripod | Tripods &amp; Monopods | Aluminum Tripod; Travel Tripod with Ball Head | 60-inch, Lightweight, Carbon Fiber | camera bag, camera battery
camera bag | Bags &amp; Cases | Camera Backpack; Camera Sling Bag | Waterproof, Padded, Large | tripod, lens filter
lens filter | Lens Accessories > Filters | UV Protection Filter; Circular Polarizer Filter | 52mm, 58mm, 67mm, 77mm | camera bag, memory card
camera battery | Batteries &amp; Chargers | Rechargeable Camera Battery; Dual Battery Charger | 2-Pack, USB-C, High Capacity | memory card, camera bag
THEME Coffee Brewing | Kitchen &amp; Dining > Coffee, Tea &amp; Espresso
espresso machine | Espresso Machines | Espresso Machine with Milk Frother; Semi-Automatic Espresso Maker | 15 Bar, Stainless Steel, Compact | coffee grinder, milk frother, espresso cups, descaling solution
coffee grinder | Coffee Grinders > Burr Grinders | Conical Burr Coffee Grinder; Electric Coffee Grinder | 18 Settings, Stainless Steel, Quiet | coffee scale, espresso cups, Coffee &amp; Tea/whole bean coffee
milk frother | Milk Frothers | Handheld Milk Frother; Electric Milk Frother &amp; Steamer | Rechargeable, Stainless Steel, 4-in-1 | espresso cups, descaling solution
coffee scale | Coffee Scales | Digital Coffee Scale with Timer; Pour Over Coffee Scale | 0.1g, Rechargeable, Waterproof | pour over kettle, coffee grinder
pour over kettle | Kettles | Gooseneck Pour Over Kettle; Electric Gooseneck Kettle | 1.0L, Temperature Control, Matte Black | coffee scale, coffee grinder
espresso cups | Cups &amp; Mugs | Double Wall Espresso Cups; Ceramic Cappuccino Mugs | Set of 4, 5 oz, Glass | milk frother, Coffee &amp; Tea/whole bean coffee
descaling solution | Cleaning Supplies | Descaling Solution for Coffee Machines; Espresso Machine Cleaning Tablets | 2 Uses, 8 oz, Universal | espresso cups, milk frother
THEME Aquarium | Pet Supplies > Fish &amp; Aquatic Pets
aquarium tank | Aquariums | Glass Aquarium Kit; Rimless Nano Aquarium | 10 Gallon, 20 Gallon, 5 Gallon | aquarium filter, aquarium heater, aquarium light, water conditioner
aquarium filter | Filters &amp; Media | Hang On Back Aquarium Filter; Internal Sponge Filter | Quiet, Adjustable Flow, 20-40 Gallon | filter media, water conditioner
aquarium heater | Heaters | Submersible Aquarium Heater; Adjustable Aquarium Heater | 50W, 100W, 200W | aquarium thermometer, aquarium light
aquarium light | Lighting | LED Aquarium Light; Full Spectrum Planted Tank Light | 12-inch, 24-inch, Dimmable | aquarium thermometer, water conditioner
water conditioner | Water Treatments | Aquarium Water Conditioner; Biological Water Clarifier | 16 oz, 8 oz, Concentrated | filter media, aquarium thermometer
filter media | Filters &amp; Media > Media | Bio Ceramic Filter Media; Activated Carbon Filter Pads | 500g, 3-Pack, Replacement | water conditioner, aquarium filter
aquarium thermometer | Thermometers | Digital Aquarium Thermometer; Stick-On Aquarium Thermometer | LCD, Accurate, 2-Pack | aquarium heater, water conditioner
THEME Gardening | Patio, Lawn &amp; Garden > Gardening &amp; Lawn Care
raised garden bed | Pots, Planters &amp; Container Accessories > Raised Beds | Raised Garden Bed; Elevated Planter Box | Galvanized Steel, Cedar Wood, 8x4 ft | potting soil, vegetable seeds, garden gloves, watering can
pruning shears | Hand Tools > Pruners | Bypass Pruning Shears; Ratchet Pruning Shears | Stainless Steel, Ergonomic, Heavy Duty | garden gloves, garden kneeler
potting soil | Soils &amp; Amendments | Organic Potting Soil; Raised Bed Soil Mix | 8 qt, 1.5 cu ft, All Purpose | vegetable seeds, plant fertilizer
vegetable seeds | Seeds &amp; Bulbs | Heirloom Vegetable Seeds Variety Pack; Tomato Seeds | Non-GMO, Organic, 20 Varieties | plant fertilizer, watering can
plant fertilizer | Fertilizers | Organic Plant Fertilizer; Slow Release Plant Food | Granular, Liquid, 4 lb | watering can, potting soil
watering can | Watering Equipment | Galvanized Watering Can; Plastic Watering Can with Long Spout | 1 Gallon, 2 Gallon, Indoor | garden gloves, plant fertilizer
garden gloves | Gardening Gloves | Gardening Gloves with Claws; Leather Garden Gloves | Thorn Proof, Breathable, Women's | garden kneeler, pruning shears
garden kneeler | Kneelers &amp; Seats | Foldable Garden Kneeler and Seat; Foam Kneeling Pad | Heavy Duty, Thick, Portable | garden gloves, pruning shears
THEME Fitness | Sports &amp; Outdoors > Exercise &amp; Fitness
adjustable dumbbells | Strength Training > Dumbbells | Adjustable Dumbbells Set; Hex Dumbbell Pair | 25 lb, 52.5 lb, Rubber Coated | weight bench, workout gloves, resistance bands
yoga mat | Yoga > Mats | Non Slip Yoga Mat; Extra Thick Exercise Mat | 6mm, 1/2 inch, TPE | yoga blocks, foam roller, resistance bands
resistance bands | Accessories > Resistance Bands | Resistance Bands Set; Loop Exercise Bands | 5 Levels, Latex Free, Fabric | yoga mat, jump rope
weight bench | Strength Training > Benches | Adjustable Weight Bench; Foldable Workout Bench | 600 lb Capacity, Incline Decline, Compact | adjustable dumbbells, workout gloves
foam roller | Accessories > Foam Rollers | High Density Foam Roller; Textured Muscle Roller | 18-inch, 36-inch, Vibrating | yoga mat, yoga blocks
yoga blocks | Yoga > Blocks | Cork Yoga Blocks; Foam Yoga Blocks | 2-Pack, High Density, Lightweight | yoga mat, foam roller
workout gloves | Accessories > Gloves | Workout Gloves with Wrist Support; Weight Lifting Gloves | Padded, Breathable, Full Palm | weight bench, jump rope
jump rope | Cardio Training > Jump Ropes | Speed Jump Rope; Weighted Jump Rope | Adjustable, Ball Bearing, Tangle Free | workout gloves, resistance bands
THEME Guitar | Musical Instruments > Guitars
acoustic guitar | Acoustic Guitars | Dreadnought Acoustic Guitar; Acoustic Electric Guitar | Solid Spruce Top, Full Size, 3/4 Size | guitar strings, guitar capo, guitar tuner, guitar case
electric guitar | Electric Guitars | Electric Guitar Kit; Solid Body Electric Guitar | Single Coil, Humbucker, Maple Neck | guitar amplifier, guitar cable, guitar strings
guitar amplifier | Amplifiers | Guitar Practice Amplifier; Modeling Guitar Amp | 10 Watt, 20 Watt, Bluetooth | guitar cable, guitar tuner
guitar strings | Strings | Acoustic Guitar Strings; Electric Guitar Strings | Light Gauge, Phosphor Bronze, Nickel Wound | guitar capo, guitar tuner
guitar capo | Accessories > Capos | Guitar Capo; Trigger Capo | Aluminum, Quick Change, Zinc Alloy | guitar tuner, guitar strings
guitar tuner | Accessories > Tuners | Clip-On Guitar Tuner; Chromatic Tuner | Rechargeable, LCD, Compact | guitar capo, guitar strings
guitar cable | Accessories > Cables | Instrument Cable; Guitar Patch Cable | 10 ft, 20 ft, Braided | guitar amplifier, guitar tuner
guitar case | Bags &amp; Cases | Padded Guitar Gig Bag; Hard Shell Guitar Case | Waterproof, 41-inch, Lockable | guitar strings, guitar capo
THEME Baking | Kitchen &amp; Dining > Bakeware
stand mixer | Small Appliances > Stand Mixers | Stand Mixer with Dough Hook; Tilt-Head Stand Mixer | 5.5 Qt, 6 Speed, 660W | mixing bowls, baking sheet, Pantry Baking/all purpose flour
cake pan | Cake Pans | Round Cake Pan Set; Springform Cake Pan | 9-inch, Nonstick, 3-Piece | cake decorating kit, cooling rack
baking sheet | Baking &amp; Cookie Sheets | Aluminum Baking Sheet; Half Sheet Pan Set | Nonstick, 2-Pack, Rimmed | silicone baking mat, cooling rack
silicone baking mat | Baking Mats | Silicone Baking Mat; Macaron Baking Mat | Half Sheet, 3-Pack, Non-Stick | baking sheet, piping bags
mixing bowls | Mixing Bowls | Stainless Steel Mixing Bowls; Glass Mixing Bowl Set | Set of 5, Nesting, With Lids | measuring cups, stand mixer
measuring cups | Measuring Tools | Measuring Cups and Spoons Set; Glass Measuring Cup | Stainless Steel, 8-Piece, Magnetic | mixing bowls, Pantry Baking/vanilla extract
cooling rack | Cooling Racks | Wire Cooling Rack; Stackable Cooling Racks | Oven Safe, 2-Pack, Stainless Steel | baking sheet, cake decorating kit
cake decorating kit | Cake Decorating | Cake Decorating Kit; Cake Turntable with Icing Spatula | 74-Piece, Rotating, Beginner | piping bags, cake pan
piping bags | Cake Decorating > Piping Bags | Disposable Piping Bags; Reusable Pastry Bags with Tips | 100-Pack, 16-inch, Thick | cake decorating kit, silicone baking mat
THEME Camping | Sports &amp; Outdoors > Camping &amp; Hiking
camping tent | Tents | Dome Camping Tent; Backpacking Tent | 2 Person, 4 Person, Waterproof | sleeping bag, sleeping pad, headlamp, camping lantern
sleeping bag | Sleeping Bags | Mummy Sleeping Bag; Rectangular Sleeping Bag | 20 Degree, Lightweight, Compact | sleeping pad, camping pillow
sleeping pad | Sleeping Pads | Inflatable Sleeping Pad; Self-Inflating Camping Mat | Ultralight, Insulated, Wide | camping pillow, sleeping bag
camping stove | Camp Kitchen > Stoves | Portable Camping Stove; Backpacking Stove | Propane, Piezo Ignition, Ultralight | camping cookware, water filter
camping cookware | Camp Kitchen > Cookware | Camping Cookware Mess Kit; Titanium Camping Pot | Nonstick, 10-Piece, Compact | camping stove, water filter
headlamp | Lights &amp; Lanterns > Headlamps | LED Headlamp; Rechargeable Headlamp | 300 Lumen, Waterproof, Red Light | camping lantern, water filter
camping lantern | Lights &amp; Lanterns > Lanterns | LED Camping Lantern; Solar Camping Lantern | Rechargeable, Collapsible, 1000 Lumen | headlamp, camping stove
water filter | Hydration &amp; Filtration | Portable Water Filter Straw; Gravity Water Filter | 0.1 Micron, BPA Free, 2-Pack | camping cookware, headlamp
camping pillow | Camp Bedding | Inflatable Camping Pillow; Compressible Travel Pillow | Ultralight, Ergonomic, Washable | sleeping pad, camping lantern
THEME Painting | Arts, Crafts &amp; Sewing > Painting, Drawing &amp; Art Supplies
acrylic paint set | Painting > Acrylic Paints | Acrylic Paint Set; Heavy Body Acrylic Paint | 24 Colors, 12 Colors, Non-Toxic | paint brushes, stretched canvas, palette, easel
watercolor paint set | Painting > Watercolor Paints | Watercolor Paint Set; Professional Watercolor Tubes | 36 Colors, 48 Colors, Travel Size | watercolor paper, paint brushes, palette
paint brushes | Painting > Brushes | Paint Brush Set; Round and Flat Detail Brushes | 15-Piece, Nylon, Synthetic Sable | palette, stretched canvas
stretched canvas | Painting > Canvas | Stretched Canvas Panels; Gallery Wrapped Canvas | 8x10 inch, 16x20 inch, 10-Pack | easel, paint brushes
watercolor paper | Drawing &amp; Painting Supplies > Paper | Cold Press Watercolor Paper Pad; Hot Press Watercolor Block | 140 lb, 9x12 inch, 30 Sheets | watercolor paint set, paint brushes
palette | Painting > Palettes | Palette Knife Set; Porcelain Mixing Palette | Stainless Steel, 5-Piece, 10 Well | paint brushes, easel
easel | Easels | Tabletop Easel; Adjustable Wooden Easel | Beechwood, Aluminum, Portable | stretched canvas, palette
THEME Cycling | Sports &amp; Outdoors > Cycling
road bike | Bikes > Road Bikes | Aluminum Road Bike; Gravel Bike | 21 Speed, 700c, Carbon Fork | bike helmet, bike lights, bike pump, bike lock
bike helmet | Helmets | Road Bike Helmet; Commuter Bike Helmet | MIPS, Adjustable, Lightweight | bike lights, cycling gloves
bike lights | Lights &amp; Reflectors | USB Rechargeable Bike Light Set; LED Bike Tail Light | 800 Lumen, Waterproof, Front and Rear | bike lock, cycling gloves
bike pump | Pumps | Floor Bike Pump with Gauge; Mini Bike Pump | Presta and Schrader, 160 PSI, Portable | bike repair kit, inner tubes
bike lock | Locks | U-Lock Bike Lock; Folding Bike Lock | Heavy Duty, Keyed, 4 ft Cable | bike lights, bike helmet
inner tubes | Tires &amp; Tubes | Bike Inner Tubes; Self Sealing Inner Tube | 700x25c, 26-inch, 2-Pack | bike pump, bike repair kit
bike repair kit | Tools &amp; Maintenance | Bike Multi Tool; Bike Tire Repair Kit | 16-in-1, Patch Kit, Compact | inner tubes, bike pump
cycling gloves | Clothing &amp; Accessories | Padded Cycling Gloves; Half Finger Bike Gloves | Gel Padded, Breathable, Touchscreen | bike helmet, bike lights
THEME Car Care | Car Care
car wash soap | Exterior Care > Car Wash Soaps | Car Wash Soap; Foam Cannon Car Wash Shampoo | pH Neutral, 1 Gallon, 64 oz | microfiber towels, car wax, wash mitt
car wax | Exterior Care > Polishes &amp; Waxes | Carnauba Car Wax; Ceramic Spray Wax | Paste, 16 oz, Hydrophobic | microfiber towels, tire shine
microfiber towels | Exterior Care > Towels | Microfiber Cleaning Towels; Plush Drying Towel | 12-Pack, 16x16 inch, Lint Free | car wax, tire shine
tire shine | Exterior Care > Tire &amp; Wheel Care | Tire Shine Spray; Wheel and Tire Cleaner | No Sling, 24 oz, Gel | microfiber towels, wash mitt
wash mitt | Exterior Care > Sponges &amp; Mitts | Chenille Wash Mitt; Microfiber Wash Mitt | Scratch Free, 2-Pack, Lint Free | car wash soap, car wax
THEME Car Electronics | Car Electronics &amp; Accessories
dash cam | Car Video > Dash Cams | Dash Cam Front and Rear; 4K Dash Camera | Night Vision, Loop Recording, WiFi | car memory card, phone mount, car charger
phone mount | Mounts &amp; Holders | Car Phone Mount; Magnetic Dashboard Phone Holder | Vent Clip, Suction Cup, 360 Rotation | car charger, fm transmitter
car charger | Chargers &amp; Power | USB Car Charger; Fast Charging Car Adapter | Dual Port, 36W, USB-C | phone mount, fm transmitter
fm transmitter | Car Audio | Bluetooth FM Transmitter; Wireless Car Radio Adapter | Hands Free, USB Charger, LED | car charger, phone mount
car memory card | Car Video > Accessories | High Endurance microSD Card; Dash Cam Memory Card | 64GB, 128GB, U3 | dash cam, phone mount
THEME Garage Tools | Tools &amp; Equipment
tire inflator | Air Compressors &amp; Inflators | Portable Tire Inflator; 12V Air Compressor | Digital Gauge, Auto Shut Off, 150 PSI | jump starter, tire gauge
jump starter | Jump Starters | Portable Car Jump Starter; Lithium Jump Starter Pack | 2000A, 12V, With Power Bank | tire inflator, socket set
socket set | Hand Tools > Socket Sets | Mechanics Socket Set; Metric Socket Wrench Set | 40-Piece, 1/4 and 3/8 Drive, Chrome Vanadium | torque wrench, jack stands
torque wrench | Hand Tools > Wrenches | Click Torque Wrench; Digital Torque Wrench | 1/2 Drive, 10-150 ft-lb, Calibrated | socket set, jack stands
tire gauge | Tire &amp; Wheel Tools | Digital Tire Pressure Gauge; Dial Tire Gauge | 0-150 PSI, Backlit, Heavy Duty | tire inflator, jump starter
jack stands | Lifts &amp; Jacks | Steel Jack Stands; Low Profile Floor Jack | 3 Ton, 2-Pack, Quick Lift | socket set, torque wrench
THEME Phone Protection | Cases, Holsters &amp; Sleeves
phone case | Basic Cases | Shockproof Phone Case; Slim Clear Phone Case | for Galaxy S21, for iPhone 13, Military Grade | screen protector, camera lens protector, phone grip
wallet case | Wallet Cases | Leather Wallet Phone Case; Card Holder Phone Case | for iPhone 13, Magnetic, RFID Blocking | screen protector, phone grip
screen protector | Screen Protectors | Tempered Glass Screen Protector; Privacy Screen Protector | 3-Pack, 9H Hardness, Case Friendly | camera lens protector, phone case
camera lens protector | Screen Protectors > Lens Protectors | Camera Lens Protector; Tempered Glass Lens Cover | 2-Pack, HD Clear, Scratch Resistant | screen protector, phone grip
phone grip | Accessories > Grips | Collapsible Phone Grip; Phone Ring Holder | Swappable Top, 360 Rotation, Kickstand | phone case, wallet case
THEME Charging | Chargers &amp; Power Adapters
wall charger | Wall Chargers | USB-C Wall Charger; GaN Fast Charger | 20W, 65W, 2-Port | usb-c cable, wireless charger
usb-c cable | Cables | USB-C to USB-C Cable; USB-C to Lightning Cable | 6 ft, Braided, 3-Pack | wall charger, power bank
wireless charger | Wireless Chargers | Wireless Charging Pad; 3-in-1 Wireless Charging Station | 15W, Qi Certified, Foldable | wall charger, usb-c cable
power bank | Portable Power Banks | Portable Power Bank; Slim Power Bank | 10000mAh, 20000mAh, PD Fast Charge | usb-c cable, wall charger
charging station | Charging Stations | Multi-Device Charging Station; USB Charging Hub | 6-Port, 60W, Desk | usb-c cable, wireless charger
THEME Mobile Audio | Headphones &amp; Earbuds
wireless earbuds | Earbud Headphones | True Wireless Earbuds; Noise Cancelling Earbuds | Bluetooth 5.3, 30H Playtime, IPX7 | earbud case, ear tips
earbud case | Cases | Silicone Earbud Case Cover; Protective Earbuds Case | Keychain, Shockproof, Clear | ear tips, wireless earbuds
ear tips | Replacement Parts | Memory Foam Ear Tips; Silicone Ear Tips | S/M/L, 3 Pairs, Noise Isolating | earbud case, neckband headphones
neckband headphones | Neckband Headphones | Bluetooth Neckband Headphones; Sport Neckband Earphones | Magnetic, 20H, Sweatproof | ear tips, wireless earbuds
headphone adapter | Adapters | USB-C to 3.5mm Headphone Adapter; Lightning to 3.5mm Adapter | Hi-Res, 2-Pack, DAC | wireless earbuds, ear tips
THEME Running Apparel | Sport Specific Clothing > Running
running shoes | Shoes > Running Shoes | Running Shoes; Trail Running Shoes | Lightweight, Breathable, Cushioned | running socks, running shorts, running belt
running socks | Socks | Running Socks; Cushioned Ankle Socks | 6-Pack, Moisture Wicking, No Show | running shoes, running shorts
running shorts | Shorts | Running Shorts with Liner; Quick Dry Athletic Shorts | 5-inch, 7-inch, Zip Pocket | running shirt, running belt
running shirt | Shirts | Dry Fit Running Shirt; Long Sleeve Running Top | Moisture Wicking, Reflective, Slim Fit | running shorts, running socks
running belt | Accessories | Running Belt Waist Pack; Phone Armband for Running | Adjustable, Reflective, Water Resistant | running shirt, running shoes
THEME Outdoor Apparel | Outdoor Recreation > Clothing
rain jacket | Jackets &amp; Coats | Waterproof Rain Jacket; Packable Rain Shell | Hooded, Lightweight, Breathable | hiking boots, fleece pullover, beanie
hiking boots | Shoes &amp; Boots | Waterproof Hiking Boots; Mid Hiking Shoes | Leather, Non-Slip, Ankle Support | wool socks, rain jacket
wool socks | Socks | Merino Wool Hiking Socks; Thermal Wool Socks | 3-Pack, Cushioned, Crew | hiking boots, beanie
fleece pullover | Fleece | Quarter Zip Fleece Pullover; Full Zip Fleece Jacket | Polar Fleece, Warm, Anti-Pill | beanie, rain jacket
beanie | Hats &amp; Caps | Knit Beanie Hat; Cuffed Winter Beanie | Warm, Unisex, Fleece Lined | wool socks, fleece pullover
THEME Jewelry | Jewelry
pendant necklace | Necklaces &amp; Pendants | Pendant Necklace; Heart Pendant Necklace | Sterling Silver, 14K Gold Plated, 18-inch | stud earrings, jewelry box, bracelet
stud earrings | Earrings | Stud Earrings; Cubic Zirconia Stud Earrings | Sterling Silver, Hypoallergenic, 14K Gold Plated | pendant necklace, jewelry box
bracelet | Bracelets | Tennis Bracelet; Charm Bracelet | Sterling Silver, Adjustable, Rose Gold | stud earrings, jewelry cleaner
jewelry box | Jewelry Boxes &amp; Organizers | Jewelry Box Organizer; Travel Jewelry Case | Leather, 2 Layer, Lockable | jewelry cleaner, pendant necklace
jewelry cleaner | Jewelry Care | Jewelry Cleaner Solution; Silver Polishing Cloth | 8 oz, Gentle, 10-Pack | jewelry box, bracelet
THEME Home Audio | Home Audio &amp; Theater
bluetooth speaker | Speakers > Portable Speakers | Portable Bluetooth Speaker; Waterproof Bluetooth Speaker | 20W, IPX7, Stereo Pairing | audio cable, speaker stand
over-ear headphones | Headphones > Over-Ear | Wireless Over-Ear Headphones; Studio Monitor Headphones | Noise Cancelling, 40H Battery, Foldable | headphone stand, audio cable
soundbar | Home Theater > Sound Bars | Soundbar with Subwoofer; Compact TV Soundbar | 2.1 Channel, Dolby Audio, Bluetooth | hdmi cable, speaker stand
headphone stand | Accessories > Stands | Headphone Stand; Under Desk Headphone Hanger | Aluminum, USB Hub, Universal | over-ear headphones, audio cable
audio cable | Accessories > Cables | 3.5mm Audio Cable; Optical Audio Cable | 6 ft, Gold Plated, Braided | bluetooth speaker, hdmi cable
hdmi cable | Accessories > Cables | High Speed HDMI Cable; 8K HDMI 2.1 Cable | 6 ft, 10 ft, Braided | soundbar, audio cable
speaker stand | Accessories > Mounts | Bookshelf Speaker Stands; Speaker Wall Mount | Pair, Adjustable, Steel | soundbar, bluetooth speaker
THEME Computer Accessories | Computers &amp; Accessories
mechanical keyboard | Keyboards | Mechanical Gaming Keyboard; Wireless Mechanical Keyboard | RGB Backlit, Hot Swappable, 75% Layout | wrist rest, mouse pad, wireless mouse
wireless mouse | Mice | Wireless Mouse; Ergonomic Vertical Mouse | 2.4G, Silent Click, Rechargeable | mouse pad, wrist rest
monitor | Monitors | IPS Computer Monitor; Curved Gaming Monitor | 24-inch, 27-inch, 144Hz | monitor arm, usb hub
monitor arm | Monitor Accessories > Mounts | Single Monitor Arm; Dual Monitor Desk Mount | Gas Spring, VESA, Adjustable | laptop stand, usb hub
laptop stand | Laptop Accessories > Stands | Aluminum Laptop Stand; Adjustable Laptop Riser | Ergonomic, Foldable, Ventilated | usb hub, wireless mouse
usb hub | Networking &amp; Hubs | USB-C Hub Multiport Adapter; USB 3.0 Hub | 7-in-1, 4-Port, HDMI | laptop stand, monitor arm
mouse pad | Keyboard &amp; Mouse Accessories | Extended Gaming Mouse Pad; Mouse Pad with Wrist Support | XXL, Stitched Edges, Non-Slip | wrist rest, wireless mouse
wrist rest | Keyboard &amp; Mouse Accessories | Keyboard Wrist Rest; Memory Foam Wrist Rest Set | Ergonomic, Non-Slip, Full Size | mouse pad, mechanical keyboard
THEME Coffee &amp; Tea | Beverages > Coffee, Tea &amp; Cocoa
whole bean coffee | Coffee > Whole Coffee Beans | Whole Bean Coffee; Espresso Roast Whole Bean Coffee | Dark Roast, Medium Roast, 2 lb Bag | coffee creamer, ground coffee
ground coffee | Coffee > Ground Coffee | Ground Coffee; Single Origin Ground Coffee | Medium Roast, Colombian, 12 oz | coffee creamer, sweetener
green tea | Tea > Green | Green Tea Bags; Loose Leaf Green Tea | 100 Count, Organic, Matcha | honey, sweetener
coffee creamer | Creamers | Powdered Coffee Creamer; Oat Milk Creamer | French Vanilla, Hazelnut, 32 oz | ground coffee, sweetener
sweetener | Sugar &amp; Sweeteners | Monk Fruit Sweetener; Stevia Packets | Zero Calorie, 200 Count, Granular | coffee creamer, green tea
honey | Honey | Raw Honey; Manuka Honey | Unfiltered, 16 oz, Squeeze Bottle | green tea, sweetener
THEME Snacks | Snack Foods
trail mix | Nuts &amp; Trail Mix | Trail Mix Snack Packs; Deluxe Mixed Nuts | Unsalted, 30 Pack, 2 lb | granola bars, beef jerky
granola bars | Bars > Granola Bars | Chewy Granola Bars; Protein Granola Bars | Variety Pack, 48 Count, Gluten Free | trail mix, dark chocolate
potato chips | Chips &amp; Crisps | Kettle Cooked Potato Chips; Sea Salt Potato Chips | Variety Pack, 1 oz Bags, 40 Count | beef jerky, popcorn
beef jerky | Jerky &amp; Dried Meats | Beef Jerky; Teriyaki Beef Jerky | Original, 10 oz, High Protein | trail mix, potato chips
dark chocolate | Chocolate | Dark Chocolate Bar; Sea Salt Dark Chocolate Squares | 72% Cacao, 12 Pack, Organic | granola bars, trail mix
popcorn | Popcorn | Microwave Popcorn; Kettle Corn | Butter, 24 Bags, Light | potato chips, dark chocolate
THEME Pantry Baking | Cooking &amp; Baking
all purpose flour | Flours &amp; Meals | All Purpose Flour; Unbleached Bread Flour | 5 lb, Organic, Unbleached | cane sugar, baking powder, chocolate chips
cane sugar | Sugars &amp; Sweeteners | Pure Cane Sugar; Light Brown Sugar | 4 lb, Organic, Granulated | vanilla extract, all purpose flour
vanilla extract | Extracts &amp; Flavorings | Pure Vanilla Extract; Madagascar Vanilla Bean Paste | 4 oz, 8 oz, Bourbon | chocolate chips, cane sugar
baking powder | Leaveners &amp; Yeasts | Double Acting Baking Powder; Active Dry Yeast | Aluminum Free, 8.1 oz, 3-Pack | all purpose flour, cane sugar
chocolate chips | Baking Chocolates | Semi-Sweet Chocolate Chips; Dark Chocolate Baking Chips | 12 oz, 72 oz, Morsels | vanilla extract, all purpose flour
sprinkles | Decorations | Rainbow Sprinkles; Sprinkle Mix | 4 oz, Jimmies, Natural Colors | chocolate chips, vanilla extract
THEME Cookware | Kitchen &amp; Dining > Cookware
cast iron skillet | Skillets | Cast Iron Skillet; Pre-Seasoned Cast Iron Pan | 10-inch, 12-inch, with Lid | skillet handle cover, chain mail scrubber, oven mitts
dutch oven | Dutch Ovens | Enameled Cast Iron Dutch Oven; Round Dutch Oven | 5.5 Qt, 6 Qt, with Lid | oven mitts, silicone spatula
nonstick pan set | Cookware Sets | Nonstick Frying Pan Set; Ceramic Nonstick Cookware Set | 3-Piece, 10-Piece, Induction | silicone spatula, oven mitts
silicone spatula | Utensils | Silicone Spatula Set; Heat Resistant Turner | 5-Piece, BPA Free, Seamless | nonstick pan set, oven mitts
oven mitts | Kitchen Linens | Oven Mitts and Pot Holders; Silicone Oven Mitts | Heat Resistant, Extra Long, 4-Piece | silicone spatula, dutch oven
skillet handle cover | Cookware Accessories | Silicone Skillet Handle Cover; Cast Iron Handle Holder | 2-Pack, Heat Resistant, Universal | chain mail scrubber, cast iron skillet
chain mail scrubber | Cleaning | Cast Iron Chain Mail Scrubber; Pan Scraper Set | Stainless Steel, 8x8 inch, Food Grade | skillet handle cover, oven mitts
THEME Bedding | Bedding
sheet set | Sheets &amp; Pillowcases | Bed Sheet Set; Deep Pocket Sheet Set | Queen, King, 1800 Thread Count | pillow, duvet cover, mattress protector
pillow | Bed Pillows | Bed Pillows for Sleeping; Memory Foam Pillow | Queen 2-Pack, Cooling, Side Sleeper | pillowcases, sheet set
duvet cover | Duvet Covers | Duvet Cover Set; Washed Cotton Duvet Cover | Queen, King, Zipper Closure | comforter, pillowcases
comforter | Comforters | Down Alternative Comforter; All Season Comforter | Queen, Quilted, Lightweight | duvet cover, sheet set
mattress protector | Mattress Pads &amp; Toppers | Waterproof Mattress Protector; Memory Foam Mattress Topper | Queen, 3-inch, Breathable | sheet set, pillow
pillowcases | Sheets &amp; Pillowcases | Satin Pillowcases; Cotton Pillowcases | 2-Pack, Standard, Queen | pillow, duvet cover
"""

# Media categories: genres -> franchises (Movies_and_TV) or artists (CDs_and_Vinyl).
MOVIE_WORDS_A = ("Silent", "Crimson", "Hidden", "Broken", "Golden", "Last", "Distant", "Iron", "Wild", "Frozen",
                 "Midnight", "Lost", "Northern", "Hollow", "Secret", "Burning", "Quiet", "Electric")  # fmt: skip
MOVIE_WORDS_B = ("Harbor", "Frontier", "Kingdom", "Signal", "Orchard", "Empire", "River", "Station", "Planet",
                 "Garden", "Voyage", "Legacy", "Island", "Valley", "Horizon", "Circuit", "Canyon", "Tide")  # fmt: skip
MOVIE_GENRES = {
    "Sci-Fi &amp; Fantasy": ("Science Fiction", "Fantasy"),
    "Drama": ("Crime Drama", "Period Drama"),
    "Kids &amp; Family": ("Animation", "Family Adventure"),
    "Documentary": ("Nature Documentary", "History Documentary"),
}
MUSIC_GENRES = {
    "Rock": ("Alternative Rock", "Classic Rock"),
    "Jazz": ("Bebop", "Smooth Jazz"),
    "Classical": ("Symphonies", "Chamber Music"),
    "Pop": ("Dance Pop", "Singer-Songwriter"),
}
ALBUM_WORDS = ("Blue", "Echoes", "Night", "Paper", "Fire", "Glass", "Summer", "Rain", "Highway", "Velvet",
               "Morning", "Shadows", "Electric", "Ocean", "Static", "Gold", "Wild", "Hearts")  # fmt: skip
FIRST_NAMES = ("Maria", "John", "Linda", "David", "Susan", "James", "Karen", "Robert", "Amy", "Kevin", "Laura",
               "Brian", "Nancy", "Chris", "Diane", "Mark", "Julie", "Steve", "Emily", "Paul", "Grace", "Tom")  # fmt: skip
SYLLABLES = ("ka", "lo", "ve", "ra", "mi", "no", "ti", "zen", "sol", "mar", "dex", "lu", "qua", "tor", "vi", "bel",
             "cor", "fin", "ga", "ly", "ne", "ox", "pra", "sen", "tal", "um", "wen", "xa", "yor", "zi")  # fmt: skip
BRAND_SUFFIX = ("", "", "", " Co.", " Labs", " Works", " Pro", " Gear", " Home", " Supply")
TIERS = {"basic": ("Basic", "Essentials", "Lite", ""), "standard": ("", "", "Classic", "Plus"),
         "pro": ("Pro", "Premium", "Elite", "Max")}  # fmt: skip
TIER_NAMES = ("basic", "standard", "pro")
COLORS = ("Black", "White", "Gray", "Blue", "Red", "Green", "Silver")
REVIEW_TEXTS = (
    "Great {noun}, exactly as described.",
    "Works well and arrived quickly. Would buy again.",
    "Good value for the price.",
    "Does the job. The {noun} feels a bit cheap but fine for now.",
    "Love it! Perfect with the rest of my setup.",
    "Returned it, the {noun} did not fit my needs.",
    "Solid quality, better than I expected.",
    "Okay product, nothing special.",
)
SUMMARIES = {5: "Five Stars", 4: "Four Stars", 3: "Three Stars", 2: "Two Stars", 1: "One Star"}


# ----------------------------------------------------------------------------------------------------------
# The catalogue
# ----------------------------------------------------------------------------------------------------------


@dataclass
class Kind:
    name: str
    leaf: list[str]
    nouns: list[str]
    attrs: list[str]
    nexts: list[str]


@dataclass
class Theme:
    name: str
    dept: list[str]
    kinds: dict[str, Kind]


@dataclass
class Item:
    asin: str
    title: str
    brand: str
    category: list[str]
    kind: str  # "<theme>/<kind>"
    tier: str
    noun: str


@dataclass
class Catalogue:
    """The items of one Amazon category, indexed the ways the user simulation needs."""

    name: str
    root: str
    themes: list[str]
    items: list[Item] = field(default_factory=list)
    by_kind_brand: dict[tuple[str, str], list[Item]] = field(default_factory=dict)
    brands_of_kind: dict[str, list[str]] = field(default_factory=dict)
    brands_of_theme: dict[str, list[str]] = field(default_factory=dict)
    nexts: dict[str, list[str]] = field(default_factory=dict)  # kind key -> next kind keys
    anchors: dict[str, list[str]] = field(default_factory=dict)  # theme -> anchor kind keys

    def add(self, item: Item) -> None:
        self.items.append(item)
        self.by_kind_brand.setdefault((item.kind, item.brand), []).append(item)
        brands = self.brands_of_kind.setdefault(item.kind, [])
        if item.brand not in brands:
            brands.append(item.brand)


def parse_themes(text: str) -> dict[str, Theme]:
    themes: dict[str, Theme] = {}
    current = None
    for line in text.strip().splitlines():
        if line.startswith("THEME "):
            name, dept = (s.strip() for s in line[6:].split("|"))
            current = themes[name] = Theme(name, [d.strip() for d in dept.split(">")], {})
            continue
        name, leaf, nouns, attrs, nexts = (s.strip() for s in line.split("|"))
        current.kinds[name] = Kind(
            name,
            [s.strip() for s in leaf.split(">")],
            [s.strip() for s in nouns.split(";")],
            [s.strip() for s in attrs.split(",")],
            [s.strip() for s in nexts.split(",")],
        )
    return themes


class Names:
    """Unique asins, reviewer ids and brand names drawn from one generator."""

    def __init__(self, rng: random.Random):
        self.rng = rng
        self.used: set[str] = set()

    def _unique(self, make) -> str:
        while True:
            value = make()
            if value not in self.used:
                self.used.add(value)
                return value

    def asin(self, numeric: bool = False) -> str:
        alnum = string.digits + string.ascii_uppercase
        if numeric:  # books, discs and films often carry ISBN-like asins
            return self._unique(lambda: "".join(self.rng.choice(string.digits) for _ in range(10)))
        return self._unique(
            lambda: "B0" + self.rng.choice("01") + "".join(self.rng.choice(alnum) for _ in range(7))
        )

    def reviewer(self) -> str:
        alnum = string.digits + string.ascii_uppercase
        n = self.rng.choice((12, 13, 14))
        return self._unique(lambda: "A" + "".join(self.rng.choice(alnum) for _ in range(n)))

    def brand(self) -> str:
        def make() -> str:
            word = "".join(self.rng.choice(SYLLABLES) for _ in range(self.rng.choice((2, 2, 3)))).capitalize()
            if self.rng.random() < 0.08:  # brands like "Hale &amp; Finch", with the entity as in the raw data
                other = "".join(self.rng.choice(SYLLABLES) for _ in range(2)).capitalize()
                return f"{word} &amp; {other}"
            return word + self.rng.choice(BRAND_SUFFIX)

        return self._unique(make)

    def person(self) -> str:
        return f"{self.rng.choice(FIRST_NAMES)} {self.rng.choice(string.ascii_uppercase)}."


def make_product_items(
    rng: random.Random,
    names: Names,
    cat: Catalogue,
    theme: Theme,
    root: str,
    brands_per_theme: int,
    depth: float,
) -> None:
    """Add a theme's products to `cat`: each brand makes most of the theme's kinds, in 1-4 tiers each."""
    brands = [names.brand() for _ in range(brands_per_theme)]
    cat.brands_of_theme[theme.name] = brands
    kinds = list(theme.kinds.values())
    cat.anchors[theme.name] = [f"{theme.name}/{k.name}" for k in kinds[:2]]
    for k in kinds:
        cat.nexts[f"{theme.name}/{k.name}"] = [n if "/" in n else f"{theme.name}/{n}" for n in k.nexts]
    for brand in brands:
        for i, k in enumerate(kinds):
            if i >= 2 and rng.random() > 0.75:  # a brand makes both anchors and most other kinds
                continue
            n_items = max(1, min(4, round(rng.gauss(depth, 0.9))))
            tiers = rng.sample(TIER_NAMES, k=min(n_items, 3)) + [rng.choice(TIER_NAMES)] * max(0, n_items - 3)
            for tier in tiers:
                noun = rng.choice(k.nouns)
                words = [brand, rng.choice(TIERS[tier]), rng.choice(k.attrs), noun]
                title = " ".join(w for w in words if w)
                if rng.random() < 0.3:
                    title += f", {rng.choice(COLORS)}"
                cat.add(
                    Item(
                        names.asin(),
                        title,
                        brand,
                        [root, *theme.dept, *k.leaf],
                        f"{theme.name}/{k.name}",
                        tier,
                        noun,
                    )
                )


def make_media_items(rng: random.Random, names: Names, cat: Catalogue, genre: str, music: bool) -> None:
    """Films: franchises with seasons; music: artists with albums. A franchise/artist is a kind of its own."""
    subs = (MUSIC_GENRES if music else MOVIE_GENRES)[genre]
    studios = [names.brand() for _ in range(3)]
    cat.brands_of_theme[genre] = []
    franchises = []
    for _ in range(rng.randint(7, 9)):
        sub = rng.choice(subs)
        if music:
            artist = names.person().replace(".", "") + rng.choice(
                ("", " Trio", " Quartet", " &amp; The Band")
            )
            brand, key = artist, f"{genre}/{artist}"
            parts = [f"{rng.choice(ALBUM_WORDS)} {rng.choice(ALBUM_WORDS)}" for _ in range(rng.randint(3, 6))]
            titles = [p + rng.choice(("", " [Vinyl]", " (Remastered)", " (Deluxe Edition)")) for p in parts]
            category = [cat.root, genre, sub]
        else:
            name = f"{rng.choice(('', 'The '))}{rng.choice(MOVIE_WORDS_A)} {rng.choice(MOVIE_WORDS_B)}"
            brand, key = rng.choice(studios + [""]), f"{genre}/{name}"
            n = rng.randint(3, 6)
            titles = [f"{name}: Season {s}" + rng.choice(("", " [Blu-ray]", " (DVD)")) for s in range(1, n)]
            titles.append(f"{name}: The Complete Series [Blu-ray]")
            category = [cat.root, "Movies" if rng.random() < 0.4 else "TV", genre, sub]
        franchises.append(key)
        cat.brands_of_theme[genre].append(brand)
        for t in titles:
            numeric = rng.random() < 0.5
            cat.add(Item(names.asin(numeric), t, brand, category, key, "standard", "disc"))
    cat.anchors[genre] = franchises
    for key in franchises:  # the next season/album of the same franchise/artist, or another of the genre
        cat.nexts[key] = [key, key, rng.choice(franchises)]


# ----------------------------------------------------------------------------------------------------------
# Users
# ----------------------------------------------------------------------------------------------------------


@dataclass
class User:
    reviewer: str
    name: str
    themes: list[str]
    brands: dict[str, list[str]]
    tier: str


def make_user(rng: random.Random, names: Names, cat: Catalogue, reviewer: str | None = None) -> User:
    themes = rng.sample(cat.themes, k=1 if rng.random() < 0.55 else 2)
    brands = {}
    for theme in themes:
        pool = cat.brands_of_theme[theme]
        brands[theme] = rng.sample(pool, k=min(len(pool), rng.choice((1, 2))))
    return User(reviewer or names.reviewer(), names.person(), themes, brands, rng.choice(TIER_NAMES))


def pick_item(
    rng: random.Random, cat: Catalogue, user: User, kind: str, brand: str | None, seen: set[str]
) -> Item | None:
    """An item of `kind`, of `brand` if it makes one, in the user's tier when possible, not bought before."""
    theme = kind.split("/")[0]
    brands = cat.brands_of_kind.get(kind)
    if not brands:
        return None
    if brand not in brands:
        favourites = [b for b in user.brands.get(theme, []) if b in brands]
        brand = rng.choice(favourites) if favourites and rng.random() < 0.7 else rng.choice(brands)
    options = [it for it in cat.by_kind_brand[(kind, brand)] if it.asin not in seen]
    if not options:
        options = [it for b in brands for it in cat.by_kind_brand[(kind, b)] if it.asin not in seen]
    if not options:
        return None
    preferred = [it for it in options if it.tier == user.tier]
    if preferred and rng.random() < 0.7:
        options = preferred
    return options[0] if cat.name in MEDIA_CATEGORIES else rng.choice(options)  # media: next season/album


def make_sequence(
    rng: random.Random, cat: Catalogue, user: User, length: int, lookup: dict[str, Catalogue]
) -> list[Item]:
    """A user's purchases: anchors in favourite themes, then mostly complements of the previous item."""
    seq: list[Item] = []
    seen: set[str] = set()
    current: Item | None = None
    tries = 0
    while len(seq) < length and tries < 10 * length:
        tries += 1
        r = rng.random()
        if current is None or r < 0.22:  # (re)start at an anchor product of a favourite theme
            theme = rng.choice(user.themes) if rng.random() < 0.85 else rng.choice(cat.themes)
            kind, brand = rng.choice(cat.anchors[theme]), None
            favourites = user.brands.get(theme)
            if favourites and rng.random() < 0.75:
                brand = rng.choice(favourites)
            source = cat
        elif r < 0.88:  # a complement of the previous purchase, usually of the same brand
            kind = rng.choice(cat.nexts[current.kind] if current.kind in cat.nexts else [current.kind])
            brand = current.brand if rng.random() < 0.7 else None
            source = cat if kind in cat.brands_of_kind else lookup.get(kind.split("/")[0], cat)
        else:  # an unrelated purchase
            item = rng.choice(cat.items)
            kind, brand, source = item.kind, item.brand, cat
        item = pick_item(rng, source, user, kind, brand, seen)
        if item is None:
            continue
        seq.append(item)
        seen.add(item.asin)
        current = item
    return seq


def review_record(rng: random.Random, user: User, item: Item, t: int) -> dict:
    rating = rng.choices((5, 4, 3, 2, 1), weights=(55, 22, 10, 6, 7))[0]
    day = datetime.fromtimestamp(t, tz=timezone.utc)
    text = rng.choice(REVIEW_TEXTS).format(noun=item.noun.lower())
    return {
        "overall": float(rating),
        "verified": rng.random() < 0.9,
        "reviewTime": f"{day.month:02d} {day.day}, {day.year}",
        "reviewerID": user.reviewer,
        "asin": item.asin,
        "reviewerName": user.name,
        "reviewText": text,
        "summary": SUMMARIES[rating],
        "unixReviewTime": t,
    }


def meta_record(rng: random.Random, item: Item, main_cat: str) -> dict:
    return {
        "category": list(item.category),
        "tech1": "",
        "description": [f"{item.title}. {rng.choice(REVIEW_TEXTS).format(noun=item.noun.lower())}"],
        "fit": "",
        "title": item.title,
        "also_buy": [],
        "tech2": "",
        "brand": item.brand,
        "feature": [],
        "rank": f"{rng.randint(1000, 900000):,} in {main_cat} (",
        "also_view": [],
        "main_cat": main_cat,
        "similar_item": "",
        "date": "",
        "price": f"${rng.randint(3, 300)}.{rng.choice(('99', '49', '95', '00'))}",
        "asin": item.asin,
        "imageURL": [],
        "imageURLHighRes": [],
    }


def timeline(rng: random.Random, n: int, start_year: int = 2012, end_year: int = 2018) -> list[int]:
    """n review times (whole days, as in the raw data); about one gap in eight is zero, a tie."""
    day = datetime(start_year, 1, 1, tzinfo=timezone.utc).timestamp() // DAY
    day = int(day) + rng.randrange(0, 365 * (end_year - start_year))
    times = []
    for _ in range(n):
        times.append(day * DAY)
        day += 0 if rng.random() < 0.12 else max(1, int(rng.expovariate(1 / 40)))
    return times


# ----------------------------------------------------------------------------------------------------------
# Mess and writing
# ----------------------------------------------------------------------------------------------------------


def as_line(record: object) -> str:
    return json.dumps(record)


def mess_up_meta(rng: random.Random, items: list[Item], records: list[dict], scale: int) -> list[str]:
    """Meta lines with the real files' mess; `records` follow `items`. Returns the lines."""
    n = len(records)
    idx = list(range(n))
    rng.shuffle(idx)
    picks = iter(idx)
    for _ in range(4 * scale):  # brand missing, empty or null
        rec = records[next(picks)]
        choice = rng.random()
        if choice < 0.5:
            del rec["brand"]
        elif choice < 0.8:
            rec["brand"] = ""
        else:
            rec["brand"] = None
    for _ in range(2 * scale):  # empty category list
        records[next(picks)]["category"] = []
    for _ in range(scale):  # no category field at all
        del records[next(picks)]["category"]
    lines = [as_line(r) for r in records]
    for _ in range(scale):  # Python-literal lines
        i = next(picks)
        lines[i] = repr(records[i])
    for _ in range(scale):  # title missing, empty or null: the item has no usable metadata
        i = next(picks)
        rec = dict(records[i])
        choice = rng.random()
        if choice < 0.4:
            del rec["title"]
        else:
            rec["title"] = "" if choice < 0.7 else None
        lines[i] = as_line(rec)
    for _ in range(max(1, scale // 2)):  # broken lines (a cut-off write); the item loses its metadata
        i = next(picks)
        lines[i] = lines[i][: len(lines[i]) // 2]
    extra = []
    for _ in range(2 * scale):  # duplicate records later in the file: the later one (new title) wins
        rec = dict(records[next(picks)])
        rec["title"] = rec["title"] + rng.choice((" (Renewed)", " - Upgraded Version", " 2-Pack"))
        extra.append(as_line(rec))
    extra += [
        "",
        '{"asin": "B000000000", "title": "Orphan record without a close',
        "null",
        '["not", "a", "record"]',
    ]
    extra.append(as_line({"title": "Record without an asin", "brand": "Nobody"}))
    for line in extra:
        lines.insert(rng.randrange(len(lines) // 2, len(lines) + 1), line)
    return lines


def mess_up_reviews(rng: random.Random, records: list[dict], scale: int) -> list[str]:
    lines = [as_line(r) for r in records]
    idx = list(range(len(lines)))
    rng.shuffle(idx)
    picks = iter(idx)
    for _ in range(scale):
        i = next(picks)
        lines[i] = repr(records[i])
    for _ in range(max(1, scale // 2)):
        i = next(picks)
        lines[i] = lines[i][: len(lines[i]) // 3]
    for key in ("unixReviewTime", "reviewerID", "asin"):
        for _ in range(max(1, scale // 2)):
            i = next(picks)
            rec = dict(records[i])
            if rng.random() < 0.7:
                del rec[key]
            else:
                rec[key] = None
            lines[i] = as_line(rec)
    for line in ("", "{}", "42"):
        lines.insert(rng.randrange(len(lines) + 1), line)
    return lines


def write_gzip_lines(path: Path, lines: list[str]) -> None:
    """Write lines gzipped with a fixed header (no name, time 0), so the bytes depend only on the lines."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=buf, mtime=0, compresslevel=9) as f:
        f.write("".join(line + "\n" for line in lines).encode("utf-8"))
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())


def reviews_in_file_order(rows: list[tuple[Item, User, int]], rng: random.Random) -> list[dict]:
    """Review records grouped by item (asin order) and by time within an item, as the 5-core files are."""
    rows = sorted(rows, key=lambda r: (r[0].asin, r[2], r[1].reviewer))
    return [review_record(rng, user, item, t) for item, user, t in rows]


def sequence_length(rng: random.Random, short: float, mean_extra: float, low: int, cap: int) -> int:
    if rng.random() < short:
        return rng.randint(1, low - 1)
    return min(cap, low + int(rng.expovariate(1 / mean_extra)))


# ----------------------------------------------------------------------------------------------------------
# The two sides
# ----------------------------------------------------------------------------------------------------------


def build_finetune(rng: random.Random, names: Names, themes: dict[str, Theme], out: Path) -> dict:
    cat = Catalogue(FINETUNE_CATEGORY, FINETUNE_ROOT, list(FINETUNE_THEMES))
    for name in FINETUNE_THEMES:
        make_product_items(rng, names, cat, themes[name], FINETUNE_ROOT, brands_per_theme=8, depth=2.7)
    rows = []
    for _ in range(FINETUNE_USERS):
        user = make_user(rng, names, cat)
        length = sequence_length(rng, short=0.05, mean_extra=4.5, low=5, cap=40)
        seq = make_sequence(rng, cat, user, length, {})
        rows += [(item, user, t) for item, t in zip(seq, timeline(rng, len(seq)))]
    reviewed = {item.asin for item, _, _ in rows}
    # Items reviewed but absent from the meta file (their reviews do not count).
    reviewed_items = [it for it in cat.items if it.asin in reviewed]
    no_meta = {it.asin for it in rng.sample(reviewed_items, 12)}
    meta_items = [it for it in cat.items if it.asin not in no_meta]
    meta_items.sort(key=lambda it: it.asin)
    records = [meta_record(rng, it, FINETUNE_ROOT.replace("&amp;", "&")) for it in meta_items]
    meta_lines = mess_up_meta(rng, meta_items, records, scale=6)
    review_lines = mess_up_reviews(rng, reviews_in_file_order(rows, rng), scale=6)
    write_gzip_lines(out / "finetune" / f"{FINETUNE_CATEGORY}_5.json.gz", review_lines)
    write_gzip_lines(out / "finetune" / f"meta_{FINETUNE_CATEGORY}.json.gz", meta_lines)
    return {
        "items": len(cat.items),
        "reviewed_items": len(reviewed),
        "users": FINETUNE_USERS,
        "reviews": len(rows),
    }


def build_pretrain(rng: random.Random, names: Names, themes: dict[str, Theme], out: Path) -> dict:
    catalogues: dict[str, Catalogue] = {}
    shared: dict[str, list[Item]] = {}  # theme name -> items, for a theme used by two categories
    by_theme: dict[str, Catalogue] = {}  # theme name -> the catalogue that owns it (cross-category purchases)
    for category, (root, theme_names, _) in PRETRAIN_CATEGORIES.items():
        cat = catalogues[category] = Catalogue(category, root, list(theme_names))
        for name in theme_names:
            if category in MEDIA_CATEGORIES:
                make_media_items(rng, names, cat, name, music=category == "CDs_and_Vinyl")
            elif name in shared:  # the same products (same asins) listed in a second category
                owner = by_theme[name]
                cat.brands_of_theme[name] = owner.brands_of_theme[name]
                cat.anchors[name] = owner.anchors[name]
                for item in shared[name]:
                    cat.add(
                        Item(
                            item.asin,
                            item.title,
                            item.brand,
                            [root, *item.category[1:]],
                            item.kind,
                            item.tier,
                            item.noun,
                        )
                    )
                cat.nexts.update({k: v for k, v in owner.nexts.items() if k.startswith(name + "/")})
            else:
                before = len(cat.items)
                make_product_items(rng, names, cat, themes[name], root, brands_per_theme=6, depth=2.2)
                shared[name] = cat.items[before:]
                by_theme[name] = cat
    # Reviewers shop in several categories: a third of each category's users come from a shared pool.
    pool = [names.reviewer() for _ in range(300)]
    summary = {}
    for category, (_root, _themes, n_users) in PRETRAIN_CATEGORIES.items():
        cat = catalogues[category]
        rows = []
        for _ in range(n_users):
            reviewer = rng.choice(pool) if rng.random() < 0.33 else None
            user = make_user(rng, names, cat, reviewer)
            length = sequence_length(rng, short=0.06, mean_extra=3.5, low=3, cap=25)
            seq = make_sequence(rng, cat, user, length, by_theme)
            rows += [(item, user, t) for item, t in zip(seq, timeline(rng, len(seq), 2010, 2018))]
        # The same reviewer may appear twice in a category's file (drawn twice from the pool); keep one.
        unique, seen_pairs = [], set()
        for row in rows:
            if (row[1].reviewer, row[0].asin) not in seen_pairs:
                seen_pairs.add((row[1].reviewer, row[0].asin))
                unique.append(row)
        rows = unique
        main_cat = cat.root.replace("&amp;", "&")
        items = sorted(cat.items, key=lambda it: it.asin)
        records = [meta_record(rng, it, main_cat) for it in items]
        meta_lines = mess_up_meta(rng, items, records, scale=1)
        review_lines = mess_up_reviews(rng, reviews_in_file_order(rows, rng), scale=1)
        write_gzip_lines(out / "pretrain" / f"{category}_5.json.gz", review_lines)
        write_gzip_lines(out / "pretrain" / f"meta_{category}.json.gz", meta_lines)
        summary[category] = {"items": len(cat.items), "reviews": len(rows)}
    return summary


def generate(output_dir: str | Path, seed: int = DEFAULT_SEED) -> dict:
    """Write the demo raw files under `output_dir`; return a short summary."""
    out = Path(output_dir)
    rng = random.Random(seed)
    names = Names(rng)
    themes = parse_themes(THEMES)
    return {
        "finetune": build_finetune(rng, names, themes, out),
        "pretrain": build_pretrain(rng, names, themes, out),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--output_dir", default=str(Path(__file__).resolve().parent / "raw"), help="where to write"
    )
    parser.add_argument(
        "--seed", type=int, default=DEFAULT_SEED, help="generator seed (the bundled data uses the default)"
    )
    args = parser.parse_args(argv)
    summary = generate(args.output_dir, args.seed)
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
