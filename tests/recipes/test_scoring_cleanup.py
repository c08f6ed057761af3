"""Scoring cleanup (signstream.recipes.scoring): one test per official rule, plus the 2014-T variant."""

import pytest

from signstream import SignstreamError, lookup
from signstream.recipes.scoring import CLEANUPS, clean_phoenix2014, clean_phoenix2014t, wer_score


@pytest.mark.parametrize("prefix", ["loc-", "cl-", "qu-", "poss-", "lh-"])
def test_prefix_is_dropped(prefix):
    assert clean_phoenix2014(f"REGEN {prefix}NORD WIND") == "REGEN NORD WIND"


def test_stacked_prefixes_are_all_dropped():
    assert clean_phoenix2014("lh-cl-KOMMEN") == "KOMMEN"


def test_s0nne_with_zero_becomes_sonne():
    assert clean_phoenix2014("S0NNE SCHEINEN") == "SONNE SCHEINEN"


def test_haben2_becomes_haben():
    assert clean_phoenix2014("HABEN2 REGEN") == "HABEN REGEN"


@pytest.mark.parametrize("marker", ["__EMOTION__", "__PU__", "__LEFTHAND__", "__EPENTHESIS__"])
def test_non_sign_marker_is_dropped(marker):
    assert clean_phoenix2014(f"REGEN {marker} WIND") == "REGEN WIND"


def test_on_off_markers_stay_in_phoenix2014():
    assert clean_phoenix2014("__ON__ REGEN __OFF__") == "__ON__ REGEN __OFF__"


def test_wie_aussehen_pair_is_hyphenated():
    assert clean_phoenix2014("MORGEN WIE AUSSEHEN WETTER") == "MORGEN WIE-AUSSEHEN WETTER"


def test_wie_alone_and_aussehen_alone_are_kept():
    assert clean_phoenix2014("WIE WETTER AUSSEHEN") == "WIE WETTER AUSSEHEN"


def test_bare_zeigen_becomes_zeigen_bildschirm():
    assert clean_phoenix2014("ZEIGEN KARTE ZEIGEN") == "ZEIGEN-BILDSCHIRM KARTE ZEIGEN-BILDSCHIRM"


def test_zeigen_bildschirm_is_not_expanded_twice():
    assert clean_phoenix2014("ZEIGEN-BILDSCHIRM KARTE") == "ZEIGEN-BILDSCHIRM KARTE"


def test_zeigen_inside_a_longer_gloss_is_untouched():
    assert clean_phoenix2014("AUFZEIGEN ZEIGENX") == "AUFZEIGEN ZEIGENX"


def test_run_of_single_letters_is_joined_with_plus():
    assert clean_phoenix2014("A B C D") == "A+B+C+D"
    assert clean_phoenix2014("NAME A B C WETTER") == "NAME A+B+C WETTER"


def test_single_letter_alone_is_not_joined():
    assert clean_phoenix2014("NAME A WETTER B") == "NAME A WETTER B"


def test_sch_and_nn_join_with_neighbouring_letters():
    assert clean_phoenix2014("SCH A NN") == "SCH+A+NN"


def test_two_capitals_followed_by_raum_lose_raum():
    assert clean_phoenix2014("XXRAUM NORDRAUM") == "XX NORD"


def test_bare_raum_is_kept():
    assert clean_phoenix2014("RAUM REGEN") == "RAUM REGEN"


def test_plusplus_suffix_is_dropped():
    assert clean_phoenix2014("REGEN-PLUSPLUS WIND") == "REGEN WIND"


def test_immediately_repeated_glosses_are_merged():
    assert clean_phoenix2014("REGEN REGEN REGEN WIND REGEN") == "REGEN WIND REGEN"


def test_repeats_created_by_earlier_rules_are_merged():
    # -PLUSPLUS and marker removal happen before merging.
    assert clean_phoenix2014("REGEN-PLUSPLUS REGEN __PU__ REGEN WIND") == "REGEN WIND"


def test_whitespace_is_normalised_and_empty_stays_empty():
    assert clean_phoenix2014("  REGEN \t WIND  ") == "REGEN WIND"
    assert clean_phoenix2014("__PU__ __EMOTION__") == ""


def test_phoenix2014t_drops_every_double_underscore_token():
    assert clean_phoenix2014t("__ON__ REGEN __OFF__ __NEW__ WIND __PU__") == "REGEN WIND"


def test_phoenix2014t_keeps_the_2014_rules():
    assert clean_phoenix2014t("loc-NORD S0NNE REGEN-PLUSPLUS A B") == "NORD SONNE REGEN A+B"


def test_phoenix2014t_merges_across_removed_markers():
    assert clean_phoenix2014t("REGEN __OFF__ REGEN") == "REGEN"


def test_phoenix2014t_keeps_lowercase_or_partial_underscore_tokens():
    assert clean_phoenix2014t("__on__ _X_ REGEN") == "__on__ _X_ REGEN"


def test_none_cleanup_changes_nothing_but_spaces():
    assert CLEANUPS["none"](" loc-NORD  NORD ") == "loc-NORD NORD"


def test_an_unknown_cleanup_names_itself_and_the_choices():
    with pytest.raises(
        SignstreamError, match="unknown cleanup 'phoenix2015'; choose from none, phoenix2014, phoenix2014t"
    ):
        lookup(CLEANUPS, "phoenix2015", "cleanup")
    with pytest.raises(SignstreamError, match="unknown cleanup 'phoenix2015'"):
        wer_score({"a": "X"}, {"a": "X"}, cleanup="phoenix2015")
