"""A retrieval prompt for the compression tests: twelve passages (written for these tests, in
lost-in-the-middle's ``Document [i](Title: T) text`` shape), one of which answers the
question; the rest are on other subjects, two of them about other bridges."""

from __future__ import annotations

QUESTION = "In which year was the Halvorsen Bridge over the Lysa river opened to traffic?"
ANSWER = "1911"
# "The Halvorsen Bridge was opened to traffic in 1911" as the compressor sends it: its fine
# stage drops function words (plugins.compress.rank.lean)
ANSWER_SENTENCE = "The Halvorsen Bridge opened to traffic in 1911"

PASSAGES = [
    ("Kettle Lake", ("Kettle Lake is a glacial lake in the northern uplands, formed when a block "
     "of ice left behind by the retreating glacier melted in a hollow of gravel. The lake has "
     "no surface outlet and its level rises and falls with the groundwater. Anglers know it for "
     "its brown trout, which were introduced by the fisheries board in the early years of the "
     "last century. A footpath circles the shore and passes an old boathouse that now serves "
     "as a small museum of rural life, open on weekends during the summer months.")),
    ("Marrow Street Market", ("The Marrow Street Market has been held every Saturday since the "
     "town charter granted the right to trade. Farmers from the valley sell cheese, apples and "
     "smoked fish from wooden stalls, and a brass bell is rung at noon to mark the end of the "
     "wholesale hour. The market hall, rebuilt after a fire, has cast iron columns and a glass "
     "roof that lets in the morning light. Local historians have collected the stall licences "
     "of three centuries, which show how the trade moved from grain to dairy goods.")),
    ("Ostrander Viaduct", ("The Ostrander Viaduct carries the mountain railway across a deep "
     "ravine on eleven stone arches. Its engineers had to bring the granite by cart from a "
     "quarry two days away, and the work was slowed by floods in two successive springs. The "
     "viaduct is still in use by freight trains, although passenger service on the line ended "
     "long ago. A walking trail runs beneath the arches, and a plaque at the eastern end names "
     "the masons who died during its construction.")),
    ("Pell's Observatory", ("Pell's Observatory stands on a hill above the harbour and was "
     "funded by a merchant who made his fortune in the tea trade. Its refracting telescope, "
     "made by a workshop in the capital, was among the largest of its kind in the region. "
     "Astronomers there catalogued variable stars and timed the transits of the moons of "
     "Jupiter. The building is now a public science centre, and school groups visit it to "
     "look at the sun through filtered lenses on clear afternoons.")),
    ("Varga Violin Workshop", ("The Varga Violin Workshop trained generations of instrument "
     "makers in the old quarter of the city. Its founder insisted on spruce from high slopes, "
     "where slow growth gives narrow rings and a bright tone. Apprentices spent a year carving "
     "scrolls before they were allowed to shape a belly. Several of the workshop's instruments "
     "are played in the national orchestra, and its varnish recipe, kept in a notebook in the "
     "city archive, is still studied by restorers.")),
    ("Tessel Harbour", ("Tessel Harbour is a sheltered anchorage on the western coast, protected "
     "by a long breakwater of rough stone. Fishing boats land herring and mackerel there, and "
     "a lifeboat station has served the harbour for generations. The harbour master's house, "
     "painted white with a red door, overlooks the slipway. In winter storms the waves break "
     "over the breakwater and the boats are hauled up the ramp, while the village below keeps "
     "its shutters closed against the spray.")),
    ("Halvorsen Bridge", ("The Halvorsen Bridge is a steel truss bridge over the Lysa river, "
     "named after the county engineer who designed it. Construction began after the old ferry "
     "sank in a spring flood, and the bridge was built from steel rolled at the ironworks "
     "downstream. The Halvorsen Bridge was opened to traffic in 1911, and for decades it was "
     "the only crossing of the Lysa for carts and motor cars. It was strengthened in the "
     "nineteen sixties and is now a protected monument, lit at night by lamps along its "
     "upper chords.")),
    ("Brannock Mill", ("Brannock Mill ground wheat and barley for the surrounding farms using a "
     "breastshot water wheel fed by a long mill race. The miller's family kept the mill running "
     "through three generations, and its account books record the price of flour in years of "
     "good and bad harvests. The wheel was restored by volunteers, and on open days it turns "
     "the stones again. The mill pond, now a nature reserve, is home to herons and to a colony "
     "of water voles.")),
    ("Corwen Forest", ("Corwen Forest covers the slopes of the valley with oak, ash and birch, "
     "with older yews in the sheltered gullies. Charcoal burners once worked in its clearings, "
     "and the flat platforms where they stacked their wood can still be found under the moss. "
     "The forest is managed for timber and for wildlife, and a network of paths links it to "
     "the villages on either side. In autumn the forest is known for its fungi, which draw "
     "visitors from far away.")),
    ("Dunmore Suspension Bridge", ("The Dunmore Suspension Bridge spans the estuary between two "
     "fishing towns and was the longest bridge of its kind in the country when it was built. "
     "Its towers are of brick, and its chains were forged in links that each weigh as much as "
     "a horse. Tolls were collected at the northern end until the county bought the bridge. "
     "Heavy lorries are not allowed on it, and a ferry still runs at low tide for those who "
     "prefer the water.")),
    ("Saltmarsh Lighthouse", ("The Saltmarsh Lighthouse marks a sandbank at the mouth of the "
     "bay, where many ships ran aground before the light was lit. Its keepers lived in "
     "cottages at the foot of the tower and rowed to the mainland for supplies. The lamp was "
     "converted from oil to electricity and the light is now automatic. The cottages have "
     "become a bird observatory, and the tower can be climbed on summer afternoons for a view "
     "of the marsh and the shipping lanes.")),
    ("Greyfriars Library", ("Greyfriars Library was founded in a former friary and holds a "
     "collection of manuscripts, maps and early printed books. Its reading room has a painted "
     "ceiling and long oak tables, and scholars come from abroad to consult its charters. The "
     "library lends modern books to the town as well, and runs a bindery where damaged "
     "volumes are repaired by hand. A chained library of theological works survives in a "
     "gallery above the reading room.")),
]


def context(passages: list[tuple[str, str]] = PASSAGES) -> str:
    return "\n".join(f"Document [{i + 1}](Title: {title}) {text}"
                     for i, (title, text) in enumerate(passages))
